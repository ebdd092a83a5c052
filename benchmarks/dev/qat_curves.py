"""Is QAT converging? The student's distance from its FP32 teacher before and after every epoch, per setting.

For one trained run and a release, each setting quantizes the run as the export does (the same calibration cases,
model type and light encoder in float) and fine-tunes the student (export/qat.py's `train_student`). Its monitor
measures the P_FI diagnosis flip rate and the mean |P_FI student - P_FI teacher| on fixed train cases (what the
student learns from) and fixed valid cases (what the gate will judge), once before the first step and after every
epoch. Then each trained student is judged by the export's gate (export/int8_gate.py, the selection limit included)
on *every* valid case, with the run's fitted reading as the device reads it: the torch student, not its exported
graph (the export's own verdict on its OpenVINO graph can differ by a case or two). Beside the flips: the mean
|dp| and the mean |seven-point expected score student - teacher| on all valid cases, and how many FP32 decisions
on valid are near ties (won by under 0.03): what a flip count can be read against; and, for every decision a
student changed, how close the FP32 decision was and whether the change moved toward the truth. With `--tta flip`
or `flip4` the gate reads as a bundle exported with `--tta` does: the teacher's and the student's P_FI averaged over
the views, the thresholds refitted on the teacher's valid TTA outputs; the student trains on single views, as the
export's does.

    python benchmarks/dev/qat_curves.py --run RUN --data RELEASE --out benchmarks/results/real-qat-curves \\
        --setting "7-bit weights everywhere, Adam 3e-5=overflow_fix:enable" \\
        --setting "7-bit first layer, Adam 3e-5=" \\
        --setting "7-bit first layer, weights 1e-6, scales 1e-5=lr:1e-6,scale_lr:1e-5" [--tta flip4]
    python benchmarks/dev/qat_curves.py --plot benchmarks/results/real-qat-curves.json    # the figure again

A setting is `LABEL=FIELD:VALUE,...` over QatSettings' fields (nothing after `=`: the defaults). Writes OUT.json
(every setting's record), OUT.md (a table) and OUT.png (the curves, drawn from the JSON alone).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields, replace
from pathlib import Path

from edgederm.errors import ConfigError, EdgeDermError
from edgederm.export import qat
from edgederm.models.tta import EXPORT_VIEW_SETS, views_of


def parse_setting(text: str, flag: str = "--setting") -> tuple[str, qat.QatSettings]:
    """`LABEL=FIELD:VALUE,...` -> (label, settings); values take the type of the field's default. `flag`: the
    option the text came from, named in the errors."""
    label, equals, spec = text.partition("=")
    if not label or not equals:
        raise ConfigError(f"{flag} {text!r}: expected LABEL=FIELD:VALUE,... (nothing after '=' for the defaults)")
    known = [f.name for f in fields(qat.QatSettings)]
    settings = qat.QatSettings()
    for item in filter(None, spec.split(",")):
        name, _, value = item.partition(":")
        if name not in known:
            raise ConfigError(f"{flag} {label!r}: no QAT setting {name!r} (one of {', '.join(known)})")
        default = getattr(settings, name)
        kind = type(default) if default is not None else float
        try:
            converted = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
        except ValueError:
            raise ConfigError(f"{flag} {label!r}: {name} {value!r} is not a {kind.__name__}") from None
        settings = replace(settings, **{name: converted})
    return label, settings


NEAR_TIE = 0.03      # an FP32 decision won by less than this (probability; the reading: half its score distance)


def near_ties(valid) -> dict:
    """How many FP32 decisions on valid were won by under NEAR_TIE: the cases a small disagreement can flip."""
    from edgederm import labels as L
    from edgederm.scoring.gate import reading_margins, top_two_margin
    diagnosis = top_two_margin(valid.reference[:, L.TASK_SLICES["DIAG"]])
    reading = (reading_margins(valid.reference, valid.reference, valid.calibration)
               if (valid.calibration or {}).get("seven_point", {}).get("reading") == "expected" else None)
    return {"margin": NEAR_TIE, "diagnosis": int((diagnosis < NEAR_TIE).sum()),
            "seven_point": None if reading is None else int((reading < NEAR_TIE).sum())}


def gate_student(student, valid, label: str, views: tuple[str, ...]) -> dict:
    """The export's verdict on the torch student read with `views`, with its distance from the teacher on every
    valid case."""
    from edgederm.export.onnx_export import run_torch
    return gate_probabilities(run_torch(student, *valid.inputs, views=views), valid, label)


def gate_probabilities(probabilities, valid, label: str) -> dict:
    """The export's verdict on a variant's probabilities on the valid cases (`valid.reference`'s rows), with its
    distance from the reference: the changed decisions' FP32 margins, mean |dp|, the seven-point score's."""
    import numpy as np

    from edgederm.export import int8_gate
    from edgederm.scoring.calibration import apply_temperatures, expected_seven_point_score
    result = int8_gate.judge_on_valid(valid, int8_gate.Attempt(label), probabilities, print).result
    temperatures = (valid.calibration or {}).get("temperatures", {})
    score = [expected_seven_point_score(apply_temperatures(p, temperatures)) for p in (probabilities, valid.reference)]
    flips, auc = result["flips"], result["auc"]
    return {"cases": len(valid.labels), "verdict": result["verdict"], "reasons": result["reasons"],
            "auc_drop_points": round(auc["drop_points"], 3), "upper_bound_points": round(auc["upper_bound_points"], 3),
            "diagnosis_flips": flips["diagnosis"]["flips"], "seven_point_flips": flips["seven_point"]["flips"],
            "confident_flips": {k: f["confident_flips"] for k, f in flips.items()},
            # how close each changed FP32 decision was, and whether the change moved toward the truth or away
            "flipped": {k: sorted(({"margin": c["reference_margin"], "direction": c["direction"]}
                                   for c in f["flipped"]), key=lambda c: c["margin"]) for k, f in flips.items()},
            "mean_abs_dp": round(float(np.abs(probabilities - valid.reference).mean()), 5),
            "mean_abs_score_difference": round(float(np.abs(score[0] - score[1]).mean()), 4)}


def measure(run: Path, data: Path, settings: list[tuple[str, qat.QatSettings]], work: Path,
            tta: str | None = None) -> dict:
    from edgederm.benchmarks.host import host_facts
    from edgederm.calibration.selection import build_calibration_set
    from edgederm.data.release import read_release
    from edgederm.export.exporter import valid_split
    from edgederm.export.openvino_export import has_attention
    from edgederm.models.io import load_model, read_metadata
    from edgederm.models.tta import NO_TTA, VIEW_SETS
    from edgederm.scoring.calibration import stored_calibration
    weights = run / "model.safetensors"
    model = load_model(weights).eval()
    release = read_release(data)
    calib = build_calibration_set(release, model.cfg.preprocess(), names=model.input_names)  # as export
    # the valid split, its FP32 reference and the gate's settings exactly as the export builds them
    views = NO_TTA if tta is None else VIEW_SETS[tta]
    valid, calibration = valid_split(release, model, model.cfg.preprocess(), views, 0,
                                     stored_calibration(read_metadata(weights)), tta)
    rows = []
    for label, s in settings:
        print(f"{label}: training the student", flush=True)
        job = qat.QatJob(weights, data, work, s, views=views, temperatures=(calibration or {}).get("temperatures"))
        student, record = qat.train_student(job, calib, has_attention(model), print)
        rows.append({"label": label, **{k: record[k] for k in ("settings", "start", "epochs", "monitored",
                                                               "minutes", "in_float", "quantizers")},
                     "gate": gate_student(student, valid, label, views)})
    host = host_facts()
    return {"run": str(run), "data": str(data), "calibration_cases": len(calib), "near_ties": near_ties(valid),
            "views": list(views),
            "host": {"cpu": host["cpu"], "cores": host["cores"]}, "rows": rows}


def markdown(result: dict) -> str:
    rows = result["rows"]
    cases = rows[0]["monitored"]
    lines = [f"QAT of `{Path(result['run']).name}` on `{result['data']}`: the student against its FP32 teacher on "
             f"{cases.get('train', 0)} fixed train and {cases.get('valid', 0)} fixed valid cases, before fine-tuning "
             f"(epoch 0) and after each epoch; minutes on {result['host']['cpu']} ({result['host']['cores']} cores).",
             "", "| setting | epoch | train flips % | train mean abs dp | valid flips % | valid mean abs dp | minutes |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        for epoch, point in enumerate([row["start"], *row["epochs"]]):
            lines.append(f"| {row['label'] if epoch == 0 else ''} | {epoch} | "
                         f"{point['train']['diagnosis_flip_percent']:.1f} | {point['train']['mean_abs_dp']:.4f} | "
                         f"{point['valid']['diagnosis_flip_percent']:.1f} | {point['valid']['mean_abs_dp']:.4f} | "
                         + (f"{row['minutes']:.1f} |" if epoch == 0 else " |"))
    gated = [row for row in rows if "gate" in row]      # results written before the gate was added have none
    if gated:
        ties = result["near_ties"]
        reading = "" if ties["seven_point"] is None else f" and {ties['seven_point']} seven-point readings"
        views = result.get("views", ["identity"])      # results written before --tta read single views
        read = "" if len(views) <= 1 else (f", teacher and student read with {len(views)} views ({', '.join(views)}) "
                                           f"and the thresholds refitted on them, as `export --tta` does")
        lines += ["", f"Each trained student judged by the export's gate on all {gated[0]['gate']['cases']} valid cases "
                  f"(the torch student{read}; margin 1 AUC point, at most 2 % of cases flipped, 1 % to be chosen). On valid "
                  f"{ties['diagnosis']} FP32 diagnoses{reading} were won by under {ties['margin']:g}.", "",
                  "| setting | AUC drop (upper bound) | diagnosis flips (clear calls) | seven-point flips (clear calls) "
                  "| mean abs dp | mean abs score difference | verdict |", "|---|---|---|---|---|---|---|"]
        for row in gated:
            g = row["gate"]
            lines.append(f"| {row['label']} | {g['auc_drop_points']:.2f} ({g['upper_bound_points']:.2f}) | "
                         f"{g['diagnosis_flips']} ({g['confident_flips']['diagnosis']}) | "
                         f"{g['seven_point_flips']} ({g['confident_flips']['seven_point']}) | {g['mean_abs_dp']:.4f} | "
                         f"{g['mean_abs_score_difference']:.3f} | {g['verdict']} |")
        flipped = [row for row in gated if "flipped" in row["gate"]]     # recorded since the flips' margins were kept
        if flipped:
            lines += ["", "The FP32 margin of every decision each student changed, smallest first (+: the change moved "
                      "toward the truth, -: away from it, no sign: neither was right):", "",
                      "| setting | diagnosis | seven-point reading |", "|---|---|---|"]
            sign = {"toward": "+", "away": "-", "neither": ""}
            for row in flipped:
                cells = [", ".join(f"{sign[c['direction']]}{c['margin']:.3f}" for c in row["gate"]["flipped"][k]) or "-"
                         for k in ("diagnosis", "seven_point")]
                lines.append(f"| {row['label']} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """Mean |dp| per epoch, train and valid side by side, one line per setting."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6 + 0.25 * len(result["rows"])), sharey=True)
    for split, axis in zip(("train", "valid"), axes):
        for row in result["rows"]:
            points = [row["start"], *row["epochs"]]
            axis.plot(range(len(points)), [p[split]["mean_abs_dp"] for p in points], marker="o", label=row["label"])
        axis.set_title(f"{split} cases ({result['rows'][0]['monitored'].get(split, 0)})")
        axis.set_xlabel("epoch (0: quantized, before fine-tuning)")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("mean |P_FI student - P_FI FP32|")
    axes[0].set_ylim(bottom=0)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", fontsize=8, frameon=False)
    figure.suptitle(f"QAT of {Path(result['run']).name}: distance from the FP32 teacher")
    figure.tight_layout(rect=(0, 0.06 + 0.05 * len(result["rows"]), 1, 1))
    figure.savefig(path, dpi=110, format="png")
    plt.close(figure)


def write(result: dict, out: Path) -> None:
    """OUT.json, OUT.md and OUT.png; the table and figure are made before anything is written, so a result file
    they cannot read leaves the old files as they were."""
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        table = markdown(result)
        figure = out.with_name(out.name + ".png.partial")
        plot(result, figure)
    except (KeyError, IndexError, TypeError) as e:
        raise ConfigError(f"{out.with_suffix('.json')}: not a qat_curves result ({type(e).__name__}: {e})") from None
    figure.replace(out.with_suffix(".png"))
    out.with_suffix(".md").write_text(table)
    tmp = out.with_name(out.name + ".json.partial")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(out.with_suffix(".json"))
    print(table)
    print(f"wrote {out.with_suffix('.json')}, .md and .png")


def read_result(path: Path) -> dict:
    """A result file written before, to draw again; a missing or unreadable one is a one-line ConfigError."""
    if not path.is_file():
        raise ConfigError(f"{path}: result file not found")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ConfigError(f"{path}: not JSON ({e})") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a finished training run")
    parser.add_argument("--data", type=Path, help="its release (the train and valid splits are read)")
    parser.add_argument("--out", type=Path, help="OUT.json, OUT.md and OUT.png are written")
    parser.add_argument("--setting", action="append", default=[], help="LABEL=FIELD:VALUE,... (repeatable)")
    parser.add_argument("--tta", metavar="|".join(EXPORT_VIEW_SETS), help="gate teacher and student read with these "
                        "views, as a bundle exported with --tta (default: the photos as they are)")
    parser.add_argument("--plot", type=Path, metavar="JSON", help="draw the figure and table again from a result file")
    args = parser.parse_args(argv)
    try:
        if args.plot:
            write(read_result(args.plot), args.plot.with_suffix(""))
            return 0
        if not (args.run and args.data and args.out and args.setting):
            raise ConfigError("--run, --data, --out and at least one --setting are needed (or --plot JSON)")
        settings = [parse_setting(text) for text in args.setting]      # every error before any training
        if args.tta is not None:
            views_of(args.tta, EXPORT_VIEW_SETS)      # one line naming the view sets a bundle can build in
        if not (args.run / "model.safetensors").is_file():
            raise ConfigError(f"{args.run}: no model.safetensors (not a finished run)")
        import tempfile
        with tempfile.TemporaryDirectory() as work:
            write(measure(args.run, args.data, settings, Path(work), args.tta), args.out)
    except EdgeDermError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
