"""The engine check for the day an NVIDIA GPU with TensorRT is at hand: does the engine a Jetson bundle builds keep
the FP32 model's decisions, as the export's gate promised?

    python benchmarks/dev/tensorrt_check.py --bundle exports/edge-jetson-int8 \
        --reference exports/edge-onnx-fp32 --data release_v0 [--split test] [--precision int8] [--out check.json]

1. Builds the engine with the installed TensorRT, as `edgederm engine build` does: the builder settings the gate's
   record asks for on this TensorRT version (edgederm/runtime/engine.py).
2. Runs the split through the engine and gates it against `--reference`, the FP32 ONNX bundle of the same weights
   and test-time views, under onnxruntime: bench's own gate (benchmarks/bench.py), so a reference of other weights
   or views gives the verdict `not comparable`, never a mixed comparison.
3. Prints one verdict line and the engine's build settings; `--out` writes the whole bench report as JSON.
   Exits 0 when the engine passes, 1 otherwise.

No engine has been built by this project yet: no machine it has run on has an NVIDIA GPU with TensorRT (the lent
GPU machines' image has no TensorRT, and its wheels are far larger than what can be carried there).
tests/test_tensorrt_runtime.py runs this script's `check` against a fake tensorrt module.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgederm.benchmarks.bench import run_bench
from edgederm.errors import EdgeDermError
from edgederm.runtime.bundle import read_manifest
from edgederm.runtime.engine import build_engine
from edgederm.scoring.gate import GateSettings


def verdict_line(row: dict, split: str) -> str:
    """'edge-jetson-int8: pass against edge-onnx-fp32 on test (155 cases): ...' for the engine's bench row."""
    if row["status"] != "ok":
        return f"{row['name']}: fail: {row['error']}"
    if row["verdict"] == "not comparable":
        return f"{row['name']}: not comparable: {row['not_comparable']}"
    gate = row["gate"]
    flips = gate["flips"]
    return (f"{row['name']}: {row['verdict']} against {row['gated_against']} on {split} "
            f"({row['accuracy']['cases']} cases): AUC drop {gate['auc']['drop_points']:.2f} points, "
            f"diagnosis flips {flips['diagnosis']['rate_percent']:.1f} %, "
            f"seven-point flips {flips['seven_point']['rate_percent']:.1f} %"
            + (f" ({'; '.join(gate['reasons'])})" if gate.get("reasons") else ""))


def check(bundle: Path, reference: Path, data: Path, split: str = "test", precision: str | None = None,
          workspace_mb: int = 1024, max_batch: int = 8, gate: GateSettings = GateSettings(), log=print,
          trt=None, facts=None) -> dict:
    """Build, run, gate: {"verdict_line", "passed", "settings" (the engine's), "report" (bench's)}. `trt` and
    `facts` are for tests, as in build_engine (the runtime then imports the same `tensorrt`)."""
    build_engine(bundle, precision=precision, workspace_mb=workspace_mb, max_batch=max_batch, log=log, trt=trt,
                 facts=facts)
    report = run_bench([str(bundle)], reference=str(reference), data=data, split=split, batch_sizes=[1], warmup=2,
                       runs=10, gate=gate)
    row = next(r for r in report["variants"] if r["bundle"] == str(bundle))
    engine = read_manifest(bundle)["engine"]
    return {"verdict_line": verdict_line(row, split), "passed": row["verdict"] == "pass",
            "settings": {**engine["settings"], "tensorrt": engine.get("tensorrt"), "gpu": engine.get("gpu")},
            "report": report}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True, help="a jetson bundle")
    parser.add_argument("--reference", type=Path, required=True,
                        help="the FP32 ONNX bundle of the same run (and the same --tta views)")
    parser.add_argument("--data", type=Path, required=True, help="the release")
    parser.add_argument("--split", default="test")
    parser.add_argument("--precision", choices=["int8", "fp16"], default=None, help="default: the bundle's")
    parser.add_argument("--workspace-mb", type=int, default=1024)
    parser.add_argument("--out", type=Path, help="the bench report as JSON")
    args = parser.parse_args(argv)
    try:
        result = check(args.bundle, args.reference, args.data, args.split, args.precision, args.workspace_mb,
                       log=lambda line: print(line, file=sys.stderr))       # stdout: the verdict and settings
    except EdgeDermError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(result["verdict_line"])
    print("engine settings: " + json.dumps({k: v for k, v in result["settings"].items() if k != "pinned"})
          + f"; pinned: {json.dumps(result['settings']['pinned'])}")
    if args.out:
        args.out.write_text(json.dumps(result["report"], indent=2))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
