"""The README's generated figures: each block between `<!-- figures:NAME -->`
and `<!-- /figures:NAME -->` is made from a committed result file in
benchmarks/results/, never typed.

    python benchmarks/dev/readme_figures.py --record quickstart/   # copy a quickstart's bench report into results/
    python benchmarks/dev/readme_figures.py                        # rewrite the README's figure blocks
    python benchmarks/dev/readme_figures.py --check                # exit 1 when the README differs (tests run this)

Blocks:
- quickstart: the headline of `edgederm quickstart` (benchmarks/results/quickstart.json, the bench
  report it wrote, latency samples dropped): per variant averaged AUC, the gate's AUC drop with its
  95 % interval and upper bound, decision flips, latency and verdict.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
QUICKSTART = RESULTS / "quickstart.json"


def record_quickstart(folder: Path) -> Path:
    """Keep what the README needs of OUT/report/report.json: everything but the raw latency samples."""
    report = json.loads((folder / "report" / "report.json").read_text())
    for row in report["variants"]:
        for lat in row.get("latency", []):
            lat.pop("times_ms", None)
    QUICKSTART.write_text(json.dumps(report, indent=1) + "\n")
    return QUICKSTART


def _flips(flips: dict | None) -> str:
    if not flips:
        return "-"
    return f"{flips['rate_percent']:.1f} % ({flips['flips']}: {flips['toward_truth']} toward, {flips['away_from_truth']} away)"


def quickstart_block(report: dict) -> str:
    host, gate = report["host"], report["gate"]
    cases = next(r["accuracy"]["cases"] for r in report["variants"] if r["status"] == "ok")
    lines = [f"Test split of the synthetic release ({cases} cases), `{report['reference']}` as the reference; "
             f"gate: paired stratified bootstrap, {gate['resamples']} resamples, seed {gate['seed']}, margin "
             f"{gate['max_auc_drop']:g} AUC point on the one-sided 95 % upper bound; {host['cpu']}, "
             f"{host['cores']} cores:", "",
             "| variant | averaged AUC | AUC drop, points [95 % CI] | upper bound | top diagnosis changed | "
             "seven-point reading changed | latency, batch 1 | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["variants"]:
        if r["status"] != "ok":
            lines.append(f"| {r['name']} | failed: {r['error']} | | | | | | fail |")
            continue
        auc = r.get("gate", {}).get("auc")
        drop = f"{auc['drop_points']:.2f} [{auc['ci_points'][0]:.2f}, {auc['ci_points'][1]:.2f}]" if auc else "-"
        upper = f"{auc['upper_bound_points']:.2f}" if auc else "-"
        flips = r.get("gate", {}).get("flips", {})
        lines.append(f"| {r['name']} | {100 * r['accuracy']['avg_auc']:.2f} | {drop} | {upper} | "
                     f"{_flips(flips.get('diagnosis'))} | {_flips(flips.get('seven_point'))} | "
                     f"{r['latency'][0]['mean_ms']:.1f} ms | {r['verdict']} |")
    lines += ["", f"Fastest variant that passes: **{report['fastest_passing'] or 'none'}**."]
    return "\n".join(lines)


BLOCKS = {"quickstart": lambda: quickstart_block(json.loads(QUICKSTART.read_text()))}


def render(readme: str) -> str:
    for name, make in BLOCKS.items():
        pattern = re.compile(rf"(<!-- figures:{name} -->\n).*?(<!-- /figures:{name} -->)", re.S)
        if not pattern.search(readme):
            raise SystemExit(f"README: no <!-- figures:{name} --> block")
        readme = pattern.sub(lambda m: m.group(1) + make() + "\n" + m.group(2), readme)
    return readme


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    parser.add_argument("--check", action="store_true", help="Exit 1 when the README's blocks differ.")
    parser.add_argument("--record", type=Path, help="A quickstart folder whose report to record first.")
    args = parser.parse_args()
    if args.record:
        print(f"recorded {record_quickstart(args.record)}")
    current = args.readme.read_text()
    wanted = render(current)
    if args.check:
        if wanted != current:
            print(f"{args.readme}: figures differ from benchmarks/results/; run python benchmarks/dev/readme_figures.py",
                  file=sys.stderr)
            return 1
        print(f"{args.readme}: figures match benchmarks/results/")
        return 0
    args.readme.write_text(wanted)
    print(f"wrote {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
