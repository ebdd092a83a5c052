"""Evaluation reports: metrics.json, a Markdown file in the paper's table
layout (one row per branch), and the headline line."""
from __future__ import annotations

import json
import math
from pathlib import Path

from edgederm import labels as L

ROWS = (("clinical", "Clinical (P_C)"), ("derm", "Dermoscopy (P_D)"), ("fusion", "Fusion (P_FU)"),
        ("final", "Weighted final (P_FI)"))


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


def markdown_report(report: dict) -> str:
    cats = [L.category_name(t, c) for t, c in L.AUC_CATEGORIES]
    out = [f"# Evaluation: {report['split']} split, {report['cases']} cases",
           "", f"Weights: `{report['weights']}`; TTA: {'6 views' if report['tta'] else 'off'}; "
           f"branch weights W_C {report['branch_weights'][0]:.2f}, W_D {report['branch_weights'][1]:.2f}, "
           f"W_FU {report['branch_weights'][2]:.2f}; {report['params_m']:.2f} M parameters.",
           "", f"**{headline(report['branches']['final'], report['params_m'])}**",
           "", "## AUC (%), one-vs-rest", "",
           "| branch | " + " | ".join(cats) + " | AVG |", "|---" * (len(cats) + 2) + "|"]
    for key, title in ROWS:
        m = report["branches"][key]
        out.append(f"| {title} | " + " | ".join(_pct(m["auc"][c]) for c in cats) + f" | {_pct(m['avg_auc'])} |")
    order = PAPER_ACCURACY_ORDER
    out += ["", "## Accuracy (%), the paper's Table 3 order", "", "| branch | " + " | ".join(order) + " | AVG |",
            "|---" * (len(order) + 2) + "|"]
    for key, title in ROWS:
        m = report["branches"][key]
        out.append(f"| {title} | " + " | ".join(_pct(m["acc"][t]) for t in order) + f" | {_pct(m['avg_acc'])} |")
    out += ["", "## Melanoma-related categories, weighted final (%), the paper's Table 4 layout", ""]
    out += melanoma_table(report["branches"]["final"])
    return "\n".join(out) + "\n"


def write_report(report: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "metrics.json", out_dir / "metrics.md"
    for path, text in ((json_path, json.dumps(report, indent=2) + "\n"), (md_path, markdown_report(report))):
        tmp = path.with_name(path.name + ".partial")
        tmp.write_text(text)
        tmp.replace(path)
    return json_path, md_path
