"""Evaluation reports: metrics.json, a Markdown file in the paper's table
layout (one row per branch), and the headline line."""
from __future__ import annotations

import json
import math
from pathlib import Path

from edgederm import labels as L
from edgederm.scoring.calibration import describe_operating_point

# a report's rows: the branches a network has (jif-mmfa: image, metadata and joint), then P_FI
ROWS = (("clinical", "Clinical (P_C)"), ("derm", "Dermoscopy (P_D)"), ("image", "Image (P_I)"),
        ("metadata", "Metadata (P_M)"), ("fusion", "Fusion (P_FU)"), ("final", "Weighted final (P_FI)"))


def _pct(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def headline(final_metrics: dict, params_m: float) -> str:
    return f"AVG AUC {_pct(final_metrics['avg_auc'])}  AVG ACC {_pct(final_metrics['avg_acc'])}  params {params_m:.2f} M"


# Table 3 of the paper lists the tasks' accuracies in this order (its AUC table follows labels.AUC_CATEGORIES).
PAPER_ACCURACY_ORDER = ("PN", "BWV", "VS", "PIG", "STR", "DaG", "RS", "DIAG")
MELANOMA_ROWS = (("AUC", None), ("PRE", "precision"), ("SEN", "sensitivity"), ("SPE", "specificity"))


def melanoma_table(metrics: dict) -> list[str]:
    """Table 4 of the paper: a column per melanoma-related category and their average, a row per metric
    (AUC, then precision / sensitivity / specificity of the argmax decision)."""
    names = list(metrics["melanoma"])
    lines = ["| metric | " + " | ".join(names) + " | AVG |", "|---" * (len(names) + 2) + "|"]
    for row, key in MELANOMA_ROWS:
        values = [metrics["auc"][n] if key is None else metrics["melanoma"][n][key] for n in names]
        defined = [v for v in values if v is not None]
        mean = sum(defined) / len(defined) if defined else None
        lines.append(f"| {row} | " + " | ".join(_pct(v) for v in values) + f" | {_pct(mean)} |")
    return lines


READINGS = (("seven_point_argmax", "seven-point score from each criterion's top class, >= 3 (the checklist)"),
            ("seven_point_expected", "expected seven-point score (points x probability), threshold from valid"),
            ("melanoma_probability", "P(MEL), threshold from valid"))


def calibration_section(calibration: dict) -> list[str]:
    """Calibration per task and the melanoma operating points, of P_FI."""
    target = 100 * calibration["target_sensitivity"]
    lines = ["## Calibration and melanoma decisions, weighted final", "",
             f"Temperatures and thresholds fitted {calibration['fitted']}; thresholds for {target:.0f} % melanoma "
             "sensitivity there. ECE: expected calibration error, 15 bins (%).", "",
             "| task | temperature | ECE | ECE calibrated |", "|---|---|---|---|"]
    for task, c in calibration["tasks"].items():
        lines.append(f"| {task} | {c['temperature']:.2f} | {_pct(c['ece'])} | {_pct(c['ece_calibrated'])} |")
    first = next(iter(calibration["melanoma"].values()))
    lines += ["", f"DIAG MEL on this split: {first['positives']} melanomas, {first['negatives']} other lesions.", "",
              "| reading | threshold | sensitivity | specificity | referred |", "|---|---|---|---|---|"]
    for key, title in READINGS:
        if key not in calibration["melanoma"]:          # no threshold: valid had no melanoma to choose it on
            continue
        op = calibration["melanoma"][key]
        lines.append(f"| {title} | {op['threshold']:.3g} | {_pct(op['sensitivity'])} | {_pct(op['specificity'])} | "
                     f"{op['referred_percent']:.1f} % |")
    return lines


def write_reliability_plot(calibration: dict, path: Path) -> Path | None:
    """Reliability diagrams of the eight tasks, before and after temperature scaling; None without matplotlib."""
    from importlib.util import find_spec
    if find_spec("matplotlib") is None:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 4, figsize=(12, 6), sharex=True, sharey=True)
    for ax, (task, c) in zip(axes.ravel(), calibration["tasks"].items()):
        ax.plot([0, 1], [0, 1], color="0.7", lw=1)
        for key, label, colour in (("reliability", f"raw, ECE {100 * c['ece']:.1f}", "tab:red"),
                                   ("reliability_calibrated", f"T={c['temperature']:.2f}, ECE "
                                    f"{100 * c['ece_calibrated']:.1f}", "tab:blue")):
            bins = c[key]
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", ms=3, color=colour,
                    label=label)
        ax.set_title(task)
        ax.legend(fontsize=7, loc="upper left")
    for ax in axes[1]:
        ax.set_xlabel("confidence")
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy")
    fig.suptitle("Reliability of P_FI per task (top class), before and after temperature scaling")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".partial.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)
    return path


def _tta(views: list[str] | None) -> str:
    return f"{len(views)} views ({', '.join(views)})" if views else "off"


def markdown_report(report: dict) -> str:
    cats = [L.category_name(t, c) for t, c in L.AUC_CATEGORIES]
    out = [f"# Evaluation: {report['split']} split, {report['cases']} cases",
           "", f"Weights: `{report['weights']}`; TTA: {_tta(report['tta'])}; "
           f"{_branch_weights(report)}; {report['params_m']:.2f} M parameters.",
           "", f"**{headline(report['branches']['final'], report['params_m'])}**"]
    if report.get("calibration", {}).get("operating_point"):
        out += ["", describe_operating_point(report["calibration"]["operating_point"]).capitalize() + "."]
    out += ["", "## AUC (%), one-vs-rest", "",
           "| branch | " + " | ".join(cats) + " | AVG |", "|---" * (len(cats) + 2) + "|"]
    rows = [(key, title) for key, title in ROWS if key in report["branches"]]
    for key, title in rows:
        m = report["branches"][key]
        out.append(f"| {title} | " + " | ".join(_pct(m["auc"][c]) for c in cats) + f" | {_pct(m['avg_auc'])} |")
    order = PAPER_ACCURACY_ORDER
    out += ["", "## Accuracy (%), the paper's Table 3 order", "", "| branch | " + " | ".join(order) + " | AVG |",
            "|---" * (len(order) + 2) + "|"]
    for key, title in rows:
        m = report["branches"][key]
        out.append(f"| {title} | " + " | ".join(_pct(m["acc"][t]) for t in order) + f" | {_pct(m['avg_acc'])} |")
    out += ["", "## Melanoma-related categories, weighted final (%), the paper's Table 4 layout", ""]
    out += melanoma_table(report["branches"]["final"])
    if report.get("location"):
        loc = report["location"]
        names = list(loc["auc"])
        out += ["", "## Body location (auxiliary task, not in the averaged AUC), AUC (%) one-vs-rest", "",
                "| " + " | ".join(names) + " | AVG | ACC |", "|---" * (len(names) + 2) + "|",
                "| " + " | ".join(_pct(loc["auc"][n]) for n in names) + f" | {_pct(loc['avg_auc'])} | {_pct(loc['acc'])} |"]
    if report.get("calibration"):
        out += [""] + calibration_section(report["calibration"])
    return "\n".join(out) + "\n"


def _branch_weights(report: dict) -> str:
    weights = report["branch_weights"]
    if len(weights) == 1:
        return "one branch (P_FI = P_C)"
    symbols = {"clinical": "W_C", "derm": "W_D", "image": "W_I", "metadata": "W_M", "fusion": "W_FU"}
    # reports written before they named their branches are two-photo ones
    names = [b for b in report["branches"] if b != "final"] or ["clinical", "derm", "fusion"]
    return "branch weights " + ", ".join(f"{symbols.get(b, b)} {w:.2f}" for b, w in zip(names, weights))


def write_report(report: dict, out_dir: Path) -> tuple[Path, Path]:
    """metrics.json and metrics.md, and reliability.png when matplotlib is installed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if report.get("calibration"):
        write_reliability_plot(report["calibration"], out_dir / "reliability.png")
    json_path, md_path = out_dir / "metrics.json", out_dir / "metrics.md"
    for path, text in ((json_path, json.dumps(report, indent=2) + "\n"), (md_path, markdown_report(report))):
        tmp = path.with_name(path.name + ".partial")
        tmp.write_text(text)
        tmp.replace(path)
    return json_path, md_path
