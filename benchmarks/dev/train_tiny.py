"""Training acceptance on this machine: synthetic release (600 cases, seed 0),
the `tiny` preset trained on the CPU, evaluated on the test split.

Targets: training within 10 minutes; weighted-final averaged AUC >= 0.80; the
dermoscopy branch beats the clinical branch.

    python benchmarks/dev/train_tiny.py [--workdir DIR] [--cases 600]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from edgederm.data.synth import write_synthetic_release
from edgederm.evaluation.evaluate import evaluate_run
from edgederm.evaluation.report import write_report
from edgederm.presets import resolve_config
from edgederm.training.trainer import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=600)
    parser.add_argument("--workdir", type=Path, default=None, help="Keep the release and run here.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        data, run = work / "synth", work / "run-tiny"
        if not data.exists():
            write_synthetic_release(data, cases=args.cases, seed=0, workers=min(2, os.cpu_count() or 1))
        model_cfg, train_cfg = resolve_config("tiny")
        start = time.perf_counter()
        train(data, run, model_cfg, train_cfg, progress=False)
        minutes = (time.perf_counter() - start) / 60
        report = evaluate_run(run, data, split="test")
        write_report(report, run / "eval-test")
        b = report["branches"]
        print(f"host: {os.cpu_count()} cores, torch {torch.__version__}, CUDA {torch.cuda.is_available()}")
        print(f"tiny preset, {train_cfg.epochs} epochs on {args.cases} synthetic cases: {minutes:.1f} min "
              f"({'meets' if minutes <= 10 else 'MISSES'} the 10 min target)")
        for key, name in (("clinical", "clinical branch"), ("derm", "dermoscopy branch"), ("fusion", "fusion branch"),
                          ("final", "weighted final")):
            print(f"test averaged AUC, {name:<18} {100 * b[key]['avg_auc']:.1f}   ACC {100 * b[key]['avg_acc']:.1f}")
        ok = b["final"]["avg_auc"] >= 0.80 and b["derm"]["avg_auc"] > b["clinical"]["avg_auc"]
        print(f"branch weights W_C/W_D/W_FU: {', '.join(f'{w:.2f}' for w in report['branch_weights'])}")
        print(f"targets (final >= 80.0, dermoscopy > clinical): {'met' if ok else 'NOT MET'}")


if __name__ == "__main__":
    main()
