"""One epoch of the `paper` preset (MobileNetV3 + Swin-T + AAB, 224 px, batch 24,
mixed precision) on a synthetic release, on a CUDA GPU: seconds per epoch and
peak GPU memory. Without CUDA it says so and measures nothing.

    python benchmarks/dev/paper_epoch_gpu.py [--cases 600] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from edgederm.data.synth import write_synthetic_release
from edgederm.presets import resolve_config
from edgederm.training.trainer import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=600)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU on this machine: the paper-preset epoch was not measured")
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        data = work / "synth"
        if not data.exists():
            write_synthetic_release(data, cases=args.cases, seed=0, workers=min(8, os.cpu_count() or 1))
        # timing only: random init, said on purpose (auto refuses where no ImageNet weights are installed)
        model_cfg, train_cfg = resolve_config("paper", train_overrides={"pretrained_clinical": "none",
                                                                        "pretrained_derm": "none"})
        train_cfg = replace(train_cfg, epochs=2, swa_epochs=0, workers=min(8, os.cpu_count() or 1))
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        train(data, work / "run-paper", model_cfg, train_cfg, progress=False)
        seconds = time.perf_counter() - start
        epochs = [json.loads(line) for line in (work / "run-paper" / "metrics.jsonl").read_text().splitlines()]
        print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}")
        print(f"paper preset: training epoch {epochs[0]['seconds']:.1f} s (first, decoding JPEGs), "
              f"{epochs[1]['seconds']:.1f} s (second, {epochs[1]['pairs_per_second']:.0f} pairs/s); "
              f"whole run {seconds:.1f} s")
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
