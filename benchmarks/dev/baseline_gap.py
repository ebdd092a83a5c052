"""How far `baseline-recipe` is from the plain fine-tune it reproduces, on the valid split, step by step.

    python benchmarks/dev/baseline_gap.py --plain PLAIN.json \
        --row "at 4e09567 (training views resized twice)=sweeps/before/sweep.json:baseline-recipe" \
        --row "views resized once=sweeps/edge-160/sweep.json:baseline-recipe" \
        --out benchmarks/results/real-baseline-gap

A plain fine-tune is one file outside this repository that trains the same two
EfficientNet-Lites with late fusion; PLAIN.json is what it wrote: the valid
split's averaged AUC and ACC (%) of each branch and of the weighted average
(`valid_clin`, `valid_derm`, `valid_fusion`, `valid_weighted`, each [AUC, ACC]),
and `minutes`. Each --row is LABEL=SWEEP_JSON:CONFIGURATION, a row of a
recipe_sweep.py result (a sweep of another commit included: its JSON is the
record). Writes OUT.json (the figures) and OUT.md (the table docs/training.md
includes), in the order given, each row's gap to the plain fine-tune beside it.
Valid only: the test split is scored once, when a default is chosen.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from recipe_sweep import write_results  # noqa: E402

BRANCHES = (("final", "valid_weighted"), ("clinical", "valid_clin"), ("derm", "valid_derm"),
            ("fusion", "valid_fusion"))


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"error: {path}: {what} not found") from None
    except json.JSONDecodeError as e:
        raise SystemExit(f"error: {path}: not JSON ({e.msg} at line {e.lineno})") from None


def plain_row(path: Path) -> dict:
    record = _read_json(path, "plain fine-tune result")
    missing = [key for _, key in BRANCHES if key not in record]
    if missing:
        raise SystemExit(f"error: {path}: no {', '.join(missing)} (a plain fine-tune's valid figures)")
    return {"label": "plain fine-tune (late fusion, same encoders)", "source": str(path),
            "minutes": record.get("minutes"),
            "valid": {b: {"avg_auc": record[key][0] / 100, "avg_acc": record[key][1] / 100} for b, key in BRANCHES}}


def sweep_row(spec: str) -> dict:
    label, _, where = spec.partition("=")
    path, _, name = where.rpartition(":")
    if not (label and path and name):
        raise SystemExit(f"error: --row {spec!r}: expected LABEL=SWEEP_JSON:CONFIGURATION")
    sweep = _read_json(Path(path), "sweep result")
    row = next((r for r in sweep["rows"] if r["name"] == name), None)
    if row is None:
        raise SystemExit(f"error: {path}: no configuration {name!r}")
    return {"label": label, "source": f"{Path(path).name}:{name}", "minutes": row["minutes"],
            "cpu": sweep.get("host", {}).get("cpu"),
            "valid": {b: row["valid"][b] for b, _ in BRANCHES}}


def table(rows: list[dict]) -> str:
    plain = rows[0]["valid"]["final"]["avg_auc"]
    lines = ["| run | valid AUC P_FI | gap | P_C | P_D | P_FU | valid ACC P_FI | minutes |", "|---" * 8 + "|"]
    for row in rows:
        v = row["valid"]
        gap = "" if row is rows[0] else f"{100 * (v['final']['avg_auc'] - plain):+.2f}"
        minutes = "-" if row["minutes"] is None else f"{row['minutes']:.1f}"
        lines.append(f"| {row['label']} | {100 * v['final']['avg_auc']:.2f} | {gap} | "
                     + " | ".join(f"{100 * v[b]['avg_auc']:.2f}" for b in ("clinical", "derm", "fusion"))
                     + f" | {100 * v['final']['avg_acc']:.2f} | {minutes} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plain", type=Path, required=True, help="the plain fine-tune's result JSON")
    parser.add_argument("--row", action="append", required=True, metavar="LABEL=SWEEP_JSON:CONFIGURATION")
    parser.add_argument("--cpu", required=True, help="the CPU every row ran on (one machine, one day)")
    parser.add_argument("--out", type=Path, required=True, help="OUT.json and OUT.md are written")
    args = parser.parse_args(argv)
    rows = [plain_row(args.plain), *(sweep_row(spec) for spec in args.row)]
    others = {row["cpu"] for row in rows[1:] if row.get("cpu") and row["cpu"] != args.cpu}
    if others:
        raise SystemExit(f"error: rows ran on {', '.join(sorted(others))}, not {args.cpu}: compare on one CPU")
    markdown = (f"`baseline-recipe` against a plain fine-tune of the same encoders on the real release's valid split "
                f"(203 cases), 160 px, seed 0, all on {args.cpu}; flip TTA for every row; gap = valid AUC of P_FI "
                f"minus the plain fine-tune's.\n\n" + table(rows) + "\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_results(args.out.parent, args.out.name, {"cpu": args.cpu, "split": "valid", "rows": rows}, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
