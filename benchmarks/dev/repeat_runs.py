"""Train every configuration of a grid with N seeds and report mean ± std: how a
sweep's best rows are confirmed before a default changes (ranked on the valid
split), and the paper's ablation tables (Tables 6, 7 and 9: means of ten runs,
on the test split).

    python benchmarks/dev/repeat_runs.py --data RELEASE --grid benchmarks/dev/grids/edge-160.toml \
        --seeds 3 --out SWEEP_DIR --only NAME ... [--split valid|test] [--tta]

The grid is recipe_sweep.py's format (a preset, a `[base]`, one `[[config]]`
per row); each configuration trains once per seed (0 .. N-1, the `seed` of its
recipe replaced) into DIR/runs/NAME-seedS, resumable like the sweep. The seed
the grid itself trains with keeps the sweep's folder, DIR/runs/NAME: with
`--out` the sweep's folder, a row the sweep trained is scored, not trained
again; a row whose training equals an earlier row's (one that differs only in
its views) is scored on that row's runs, as the sweep does. Every run is
scored on `--split`: valid by default, because defaults change on valid
evidence alone (test for the paper's tables, with 6-view TTA when asked, as
the paper evaluates); the standard deviation is the sample one (ddof 1), as a
mean of ten runs "± std" is usually reported. Writes
DIR/repeats.json (every run's figures) and DIR/repeats.md: one row per
configuration, best mean AVG AUC first, with AVG AUC, AVG ACC and parameters,
then mean ± std of every category's AUC and every task's accuracy.

Hours per configuration at the paper's recipe (250 epochs): a GPU job. On a
CPU, the `tiny` preset with a few epochs shows the mechanics.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from recipe_sweep import resolve_grid, run_names, run_one, write_results  # noqa: E402

from edgederm import labels as L  # noqa: E402
from edgederm.errors import ConfigError, EdgeDermError  # noqa: E402
from edgederm.evaluation.evaluate import evaluate_run  # noqa: E402
from edgederm.evaluation.report import PAPER_ACCURACY_ORDER  # noqa: E402


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single run)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _cell(values: list[float | None]) -> str:
    defined = [100 * v for v in values if v is not None]
    if not defined:
        return "-"
    mean, std = mean_std(defined)
    return f"{mean:.1f}±{std:.1f}"


def summarize(name: str, note: str, runs: list[dict]) -> dict:
    """One configuration's row: every metric's per-seed values, and their mean and std."""
    final = [r["scores"] for r in runs]
    metrics = {"avg_auc": [m["avg_auc"] for m in final], "avg_acc": [m["avg_acc"] for m in final]}
    for category in final[0]["auc"]:
        metrics[f"auc {category}"] = [m["auc"][category] for m in final]
    for task in L.TASK_KEYS:
        metrics[f"acc {task}"] = [m["acc"][task] for m in final]
    stats = {k: dict(zip(("mean", "std"), mean_std([v for v in values if v is not None])))
             for k, values in metrics.items() if any(v is not None for v in values)}
    return {"name": name, "note": note, "seeds": [r["seed"] for r in runs], "params_m": runs[0]["params_m"],
            "values": metrics, "stats": stats}


def markdown(rows: list[dict], grid: Path, data: Path, cases: int, tta: bool, split: str = "test") -> str:
    n = len(rows[0]["seeds"])
    lines = [f"Repeated runs of `{grid.name}` on `{data}`: {n} seed(s) each, {split} split ({cases} cases), "
             f"{'6-view TTA' if tta else 'each row scored with its own views, as the sweep scores it'}; "
             "mean ± sample std (%) of P_FI.", "",
             "| configuration | AVG AUC | AVG ACC | params (M) | views | what changes |", "|---|---|---|---|---|---|"]
    for row in rows:
        v = row["values"]
        views = {True: "six", False: "one"}.get(row.get("tta", tta), row.get("tta"))
        lines.append(f"| `{row['name']}` | {_cell(v['avg_auc'])} | {_cell(v['avg_acc'])} | {row['params_m']:.2f} | "
                     f"{views} | {row['note']} |")
    categories = [L.category_name(t, c) for t, c in L.AUC_CATEGORIES]
    lines += ["", "AUC per category:", "", "| configuration | " + " | ".join(categories) + " |",
              "|---" * (len(categories) + 1) + "|"]
    for row in rows:
        lines.append(f"| `{row['name']}` | " + " | ".join(_cell(row["values"][f"auc {c}"]) for c in categories) + " |")
    lines += ["", "Accuracy per task (the paper's Table 3 order):", "",
              "| configuration | " + " | ".join(PAPER_ACCURACY_ORDER) + " |", "|---" * (len(PAPER_ACCURACY_ORDER) + 1) + "|"]
    for row in rows:
        lines.append(f"| `{row['name']}` | " + " | ".join(_cell(row["values"][f"acc {t}"]) for t in PAPER_ACCURACY_ORDER)
                     + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a release_v0 folder (real or synthetic)")
    parser.add_argument("--grid", type=Path, required=True, help="grid TOML file (recipe_sweep.py's format)")
    parser.add_argument("--seeds", type=int, default=10, help="runs per configuration, seeds 0..N-1 (default 10)")
    parser.add_argument("--out", type=Path, required=True, help="folder: runs/, repeats.json, repeats.md")
    parser.add_argument("--split", choices=("valid", "test"), default="valid",
                        help="the split every run is scored on: valid (default; what defaults are chosen on) or test "
                             "(the paper's tables)")
    parser.add_argument("--tta", action="store_true", help="score with 6-view TTA (as the paper)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only these configurations")
    args = parser.parse_args(argv)
    try:
        if args.seeds < 1:
            raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
        preset, resolved = resolve_grid(args.grid, args.only)
        args.out.mkdir(parents=True, exist_ok=True)
        rows, cases = [], 0
        shared = run_names(args.grid)
        for config, model_cfg, train_cfg in resolved:
            runs = []
            # --tta: six views for every row (the paper's tables); else each row's own, as the sweep scores it
            views = True if args.tta else (config.get("tta") or train_cfg.branch_weights_tta or False)
            owner = shared[config["name"]]        # the row whose runs this one reads (itself, unless views differ)
            for seed in range(args.seeds):
                # the grid's own seed trains in the sweep's folder name, so a sweep's run is reused
                name = owner if seed == train_cfg.seed else f"{owner}-seed{seed}"
                run_one(name, model_cfg, replace(train_cfg, seed=seed), args.data, args.out, report_test=False)
                evaluation = evaluate_run(args.out / "runs" / name, args.data, split=args.split, tta=views)
                cases = evaluation["cases"]
                runs.append({"seed": seed, "params_m": evaluation["params_m"],
                             "scores": evaluation["branches"]["final"]})
            rows.append({**summarize(config["name"], config.get("note", ""), runs), "tta": views})
        rows.sort(key=lambda row: -row["stats"]["avg_auc"]["mean"])
    except EdgeDermError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    result = {"grid": str(args.grid), "preset": preset, "data": str(args.data), "seeds": args.seeds,
              "tta": args.tta, "split": args.split, "cases": cases, "rows": rows}
    write_results(args.out, "repeats", result, markdown(rows, args.grid, args.data, cases, args.tta, args.split))
    return 0


if __name__ == "__main__":
    sys.exit(main())
