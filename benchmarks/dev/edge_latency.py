"""The `edge` preset beside the `paper` preset: PyTorch FP32, OpenVINO FP32 and
OpenVINO INT8 latency at batch 1, 224 px, in one `edgederm bench` report, each
variant also compared with its own model's PyTorch FP32; beside the model call,
the end-to-end wait for a pair of photos (decode, preprocess, infer) on a
derm7pt-size pair (768 x 512, from the synthetic release) and on a 12-MP phone
pair (4000 x 3000, made from it), each OpenVINO bundle also with reduced JPEG
decoding (`+reduced`).

Latency does not depend on the weights' values: the edge model starts from the
packaged ImageNet weights, the paper model from random init (no Swin-T or
MobileNetV3 ImageNet weights exist offline here). INT8 calibration uses 64
synthetic cases; accuracy is measured in benchmarks/edge_pretrained.py.

    python benchmarks/dev/edge_latency.py [--workdir DIR] [--runs 50] [--rounds 3] [--e2e-runs 10]

This shared 2-core machine has slow spells (the same graph measured 12.5 ms
and 19 ms minutes apart), so the variants are timed in round-robin rounds and
the runs pooled.

Prints the table; writes WORKDIR/report and benchmarks/results/edge-vs-paper-latency-batch1.md.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch
from workdir import ensure_bundles, synthetic_release

from edgederm.benchmarks.bench import run_bench
from edgederm.benchmarks.photos import write_phone_pair
from edgederm.benchmarks.report import write_reports
from edgederm.data.release import read_release
from edgederm.scoring.gate import GateSettings
from edgederm.models import create_model
from edgederm.presets import get_preset
from edgederm.models.io import save_weights
from edgederm.models.pretrained import initialize

RESULTS = Path(__file__).resolve().parents[1] / "results"
PRESETS = {"edge": "auto", "paper": "none"}     # preset -> initial weights


def _untrained_run(work: Path, preset: str, init: str) -> Path:
    run = work / f"{preset}-{'imagenet' if init == 'auto' else 'random'}"
    if not (run / "model.safetensors").exists():
        run.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        model = create_model(get_preset(preset).model)
        records = initialize(model, init, init)
        save_weights(model, run / "model.safetensors", extra={"source": f"{preset} preset, not trained",
                                                              "initial_weights": records})
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3, help="Round-robin rounds over the variants, pooled.")
    parser.add_argument("--e2e-runs", type=int, default=10, help="Timed pairs per photo set, end to end.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        data = synthetic_release(work, cases=200)
        bundles = []
        for preset, init in PRESETS.items():
            made = ensure_bundles(_untrained_run(work, preset, init), data, work / "exports",
                                  {"torch": "fp32", "openvino": "fp32,int8"}, calibration_cases=64, eval_split=None,
                                  # untrained weights: the INT8 gate on valid would judge noise; latency only
                                  max_auc_drop=100.0, max_flip_rate=100.0)
            bundles += [str(path) for path in made.values()]
        bundles += [f"{b}+reduced" for b in bundles if "openvino" in Path(b).name]
        first = read_release(data).split("test")[0]
        derm7pt = work / "photos-768x512"
        derm7pt.mkdir(exist_ok=True)
        for name, source in (("1-clinical.jpg", first.clinical), ("2-derm.jpg", first.derm)):
            shutil.copy(source, derm7pt / name)
        phone = work / "photos-12mp"
        if not (phone / "2-derm.jpg").exists():
            write_phone_pair(phone, first.clinical, first.derm)
        report = run_bench(bundles, reference=bundles[0], data=None, split="test", batch_sizes=[1], warmup=10,
                           runs=args.runs, gate=GateSettings(), rounds=args.rounds, photos=[derm7pt, phone],
                           e2e_runs=args.e2e_runs)
        paths = write_reports(report, work / "report")
        RESULTS.mkdir(exist_ok=True)
        shutil.copy(paths["md"], RESULTS / "edge-vs-paper-latency-batch1.md")
        rows = {r["name"]: r for r in report["variants"]}
        for row in report["variants"]:
            lat = row["latency"][0]
            print(f"{row['name']:<32} mean {lat['mean_ms']:7.1f} ms  p50 {lat['p50_ms']:7.1f}  "
                  f"x{row['speedup_vs_own_torch_fp32']:.2f} vs its PyTorch FP32  peak RSS {row['peak_rss_mib']:.0f} MiB")
        ms = {name: rows[name]["latency"][0]["mean_ms"] for name in rows}
        edge, paper = "edge-imagenet-openvino", "paper-random-openvino"
        print(f"OpenVINO FP32, paper / edge: {ms[paper + '-fp32'] / ms[edge + '-fp32']:.2f}x (target >= 4)")
        print(f"edge INT8 vs FP32: {ms[edge + '-fp32'] / ms[edge + '-int8']:.2f}x (target > 1)")
        for name in (edge + "-int8", paper + "-int8"):
            for full, reduced in zip(rows[name]["end_to_end"], rows[name + "+reduced"]["end_to_end"]):
                print(f"{name}, {full['photos']}: end to end {full['mean_ms']:.1f} ms ({100 * full['decode_preprocess_share']:.0f} % "
                      f"decode + preprocess; model alone {rows[name]['latency'][0]['mean_ms']:.1f} ms); reduced decoding "
                      f"{reduced['mean_ms']:.1f} ms ({full['mean_ms'] / reduced['mean_ms']:.2f}x)")
        print(f"report: {paths['html']}")


if __name__ == "__main__":
    main()
