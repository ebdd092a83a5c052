"""Latency of the `paper` preset's architecture (MobileNetV3 + Swin-T + AAB,
224 px) on this machine, batch 1, across backends: PyTorch FP32 eager,
onnxruntime FP32, OpenVINO FP32, OpenVINO INT8 and the INT8 Q/DQ ONNX in
onnxruntime. Random initial weights: latency does not depend on them, and no
trained paper model exists on these machines. INT8 calibration uses 64
synthetic cases (enough for scales; accuracy is not measured here).

    python benchmarks/dev/paper_latency.py [--workdir DIR] [--runs 50]

Prints the bench table and writes the report to WORKDIR/report and its
Markdown to benchmarks/results/paper-latency-batch1.md.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch
from workdir import ensure_bundles, synthetic_release

from edgederm.benchmarks.bench import run_bench
from edgederm.benchmarks.report import write_reports
from edgederm.scoring.gate import GateSettings
from edgederm.models import create_model
from edgederm.presets import get_preset
from edgederm.models.io import save_weights

RESULTS = Path(__file__).resolve().parents[1] / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        data = synthetic_release(work, cases=200)
        run = work / "paper-random"
        if not (run / "model.safetensors").exists():
            run.mkdir(parents=True, exist_ok=True)
            torch.manual_seed(0)
            save_weights(create_model(get_preset("paper").model), run / "model.safetensors", extra={"source": "random init"})
        made = ensure_bundles(run, data, work / "exports", {"torch": "fp32", "onnx": "fp32", "openvino": "fp32,int8",
                                                            "jetson": "int8"}, calibration_cases=64, eval_split=None,
                               # random weights: the INT8 gate on valid would judge noise; latency only
                               max_auc_drop=100.0, max_flip_rate=100.0)
        bundles = [str(made[name]) for name in ("torch-fp32", "onnx-fp32", "openvino-fp32", "openvino-int8")]
        bundles.append(f"{made['jetson-int8']}@onnxruntime")
        report = run_bench(bundles, reference=bundles[0], data=None, split="test", batch_sizes=[1], warmup=10,
                           runs=args.runs, gate=GateSettings())
        paths = write_reports(report, work / "report")
        RESULTS.mkdir(exist_ok=True)
        shutil.copy(paths["md"], RESULTS / "paper-latency-batch1.md")
        for row in report["variants"]:
            lat = row["latency"][0]
            print(f"{row['name']:<36} mean {lat['mean_ms']:7.1f} ms  p50 {lat['p50_ms']:7.1f}  p99 {lat['p99_ms']:7.1f}"
                  f"  x{row.get('speedup_vs_reference', 0):.2f} vs PyTorch FP32  peak RSS {row['peak_rss_mib']:.0f} MiB")
        print(f"report: {paths['html']}")


if __name__ == "__main__":
    main()
