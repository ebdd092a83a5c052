"""How many decisions does the FP32 model change by itself? Its valid-split decisions against its own on the same
photos changed as a clinic's photos are changed every day, judged by the export's INT8 gate.

The gate refuses an INT8 graph that changes more than 1 % of the FP32 model's top diagnoses or seven-point
readings on valid (2 % to pass; export/int8_gate.py). On the real `edge` model no INT8 graph tried stays within
1 % of 203 cases, and most decisions the QAT students change were FP32 near ties (docs/export.md). This script
measures the yardstick beside them: the same FP32 model, fed the same photos after a change that carries no clinical information, and judged
by the same gate against itself:

- `jpeg-95`, `jpeg-85`: each photo decoded, saved again as JPEG at that quality (OpenCV's encoder, the
  phone's photo re-saved by an app or a messenger), and read as the device reads it
  (edgederm.preprocess: the same DCT-domain reduction, resize and crop);
- `mirror`: each photo mirrored left to right (the model trains with flips: a lesion has no left and right).

    python benchmarks/dev/decision_noise.py --run RUN --data RELEASE --out benchmarks/results/real-decision-noise

Writes OUT.json and OUT.md (a table; `--render OUT.json` writes the table again from the file). numpy, OpenCV
and torch; no training, half a minute on 2 cores for the 203 real valid cases.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
from qat_curves import gate_probabilities, near_ties, read_result   # benchmarks/dev: the gate's figures, as for a student

from edgederm.errors import ConfigError, EdgeDermError

PERTURBATIONS = {
    "jpeg-95": "each photo saved again as JPEG, quality 95",
    "jpeg-85": "each photo saved again as JPEG, quality 85",
    "mirror": "each photo mirrored left to right",
}


def resaved(path: Path, quality: int, cfg) -> np.ndarray:
    """The model input of the photo at `path` after one more JPEG save at `quality`, read as the device reads
    a photo (full decode, encode, then `decode_image` with the model's DCT-domain reduction)."""
    from edgederm.preprocess import decode_image, preprocess_image, read_image
    rgb = read_image(path)
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ConfigError(f"{path}: OpenCV could not encode it as JPEG")
    return preprocess_image(decode_image(encoded.tobytes(), str(path), cfg.min_decoded_side), cfg, str(path))


def perturbed_inputs(name: str, cases, inputs: tuple[np.ndarray, ...], input_names: tuple[str, ...], cfg
                     ) -> tuple[np.ndarray, ...]:
    """The model inputs with every photo changed by the perturbation `name`; metadata kept as it is."""
    from edgederm.data.inputs import case_photo, is_photo
    changed = []
    for name_of_input, array in zip(input_names, inputs):
        if not is_photo(name_of_input):
            changed.append(array)
        elif name == "mirror":
            changed.append(np.ascontiguousarray(array[..., ::-1]))
        else:
            quality = int(name.split("-")[1])
            changed.append(np.stack([resaved(case_photo(c, name_of_input), quality, cfg) for c in cases]))
    return tuple(changed)


def measure(run: Path, data: Path, names: list[str]) -> dict:
    from edgederm.benchmarks.host import host_facts
    from edgederm.data.release import read_release
    from edgederm.export.exporter import valid_split
    from edgederm.export.onnx_export import run_torch
    from edgederm.models.io import load_model, read_metadata
    from edgederm.models.tta import NO_TTA
    from edgederm.scoring.calibration import stored_calibration
    weights = run / "model.safetensors"
    model = load_model(weights).eval()
    cfg = model.cfg.preprocess()
    release = read_release(data)
    # the valid split, its FP32 reference and the gate's settings exactly as the export builds them
    valid, _ = valid_split(release, model, cfg, NO_TTA, 0, stored_calibration(read_metadata(weights)), None)
    cases = release.split("valid")
    rows = []
    for name in names:
        print(f"{name}: {PERTURBATIONS[name]}", flush=True)
        probabilities = run_torch(model, *perturbed_inputs(name, cases, valid.inputs, model.input_names, cfg))
        rows.append({"perturbation": name, "what": PERTURBATIONS[name],
                     "gate": gate_probabilities(probabilities, valid, name)})
    host = host_facts()
    return {"run": str(run), "data": str(data), "cases": len(cases), "near_ties": near_ties(valid),
            "host": {"cpu": host["cpu"], "cores": host["cores"]}, "rows": rows}


def _margins(flipped: list[dict]) -> str:
    sign = {"toward": "+", "away": "-", "neither": ""}
    return ", ".join(f"{sign[c['direction']]}{c['margin']:.3f}" for c in flipped) or "none"


def markdown(result: dict) -> str:
    ties = result["near_ties"]
    lines = [f"The FP32 model of `{Path(result['run']).name}` against itself on `{Path(result['data']).name}`'s "
             f"{result['cases']} valid cases, each photo changed as below, judged by the export's INT8 gate (margin "
             "1 AUC point, at most 2 % of cases flipped, 1 % to be chosen); on "
             f"{result['host']['cpu']} ({result['host']['cores']} cores). On valid {ties['diagnosis']} FP32 diagnoses "
             f"and {ties['seven_point']} seven-point readings were won by under {ties['margin']:g}.", "",
             "| the same photos | AUC drop (upper bound) | diagnosis flips (clear calls) | seven-point flips (clear calls) "
             "| mean abs dp | mean abs score difference | verdict |", "|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        g = row["gate"]
        lines.append(f"| {row['what']} | {g['auc_drop_points']:.2f} ({g['upper_bound_points']:.2f}) | "
                     f"{g['diagnosis_flips']} ({g['confident_flips']['diagnosis']}) | {g['seven_point_flips']} "
                     f"({g['confident_flips']['seven_point']}) | {g['mean_abs_dp']:.4f} | "
                     f"{g['mean_abs_score_difference']:.3f} | {g['verdict']} |")
    lines += ["", "The FP32 margin of every decision the change turned, smallest first (+: toward the truth, "
              "-: away from it, no sign: neither was right):", "", "| the same photos | diagnosis | seven-point reading |",
              "|---|---|---|"]
    lines += [f"| {row['what']} | {_margins(row['gate']['flipped']['diagnosis'])} | "
              f"{_margins(row['gate']['flipped']['seven_point'])} |" for row in result["rows"]]
    return "\n".join(lines) + "\n"


def write(result: dict, out: Path) -> None:
    """OUT.md and OUT.json; the table is made first, so a file it cannot read leaves the old ones as they were."""
    try:
        table = markdown(result)
    except (KeyError, IndexError, TypeError) as e:
        raise ConfigError(f"{out.with_suffix('.json')}: not a decision_noise result ({type(e).__name__}: {e})"
                          ) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(table)
    tmp = out.with_name(out.name + ".json.partial")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(out.with_suffix(".json"))
    print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a finished training run")
    parser.add_argument("--data", type=Path, help="its release (the valid split is read)")
    parser.add_argument("--out", type=Path, help="OUT.json and OUT.md are written")
    parser.add_argument("--perturbation", action="append", choices=sorted(PERTURBATIONS),
                        help="one of them (repeatable; default: all)")
    parser.add_argument("--render", type=Path, metavar="JSON", help="write the table again from a result file")
    args = parser.parse_args(argv)
    try:
        if args.render:
            write(read_result(args.render), args.render.with_suffix(""))
            return 0
        if not (args.run and args.data and args.out):
            raise ConfigError("--run, --data and --out are needed (or --render JSON)")
        if not (args.run / "model.safetensors").is_file():
            raise ConfigError(f"{args.run}: no model.safetensors (not a finished run)")
        write(measure(args.run, args.data, args.perturbation or list(PERTURBATIONS)), args.out)
    except EdgeDermError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
