"""Foundation speed targets, measured and printed:

- `edgederm data synth`: 600 cases in under 2 minutes on this machine;
- the `tiny` preset: one training epoch over 600 synthetic cases (forward,
  backward, Adam step on every case) in under a minute on 2 CPU cores.

    python benchmarks/dev/foundation_speed.py [--cases 600] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from edgederm.augment import AugmentConfig
from edgederm.data.release import SPLITS, read_release
from edgederm.data.synth import write_synthetic_release
from edgederm.data.torch_dataset import PairDataset
from edgederm.models import create_model
from edgederm.presets import get_preset
from edgederm.models.heads import split_tasks


def time_synth(root: Path, cases: int, workers: int) -> float:
    start = time.perf_counter()
    write_synthetic_release(root, cases=cases, seed=0, workers=workers)
    return time.perf_counter() - start


def time_tiny_epoch(root: Path, batch_size: int = 24) -> tuple[float, float, int]:
    """(seconds for the first epoch incl. decoding, seconds for a cached epoch, cases)."""
    release = read_release(root)
    cases = [c for s in SPLITS for c in release.split(s)]
    cfg = get_preset("tiny").model
    data = PairDataset(cases, cfg.preprocess(), AugmentConfig())
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True)
    model = create_model(cfg).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        for clinical, derm, targets in loader:
            logits = model(clinical, derm)
            loss = sum(torch.nn.functional.cross_entropy(task_logits, targets[:, i])
                       for branch in logits.values()
                       for i, task_logits in enumerate(split_tasks(branch).values()))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        times.append(time.perf_counter() - start)
    return times[0], times[1], len(cases)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=600)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--workdir", type=Path, default=None, help="Where to write the release (default: a temp dir).")
    args = parser.parse_args()
    print(f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        root = (args.workdir or Path(tmp)) / "synth"
        seconds = time_synth(root, args.cases, args.workers)
        print(f"data synth: {args.cases} cases in {seconds:.1f} s with {args.workers} workers "
              f"({'meets' if seconds < 120 else 'MISSES'} the 120 s target)")
        first, cached, n = time_tiny_epoch(root)
        print(f"tiny preset: epoch over {n} cases: {first:.1f} s first (decoding JPEGs), {cached:.1f} s cached "
              f"({'meets' if first < 60 else 'MISSES'} the 60 s target)")


if __name__ == "__main__":
    main()
