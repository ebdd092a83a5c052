"""The generated figures of README.md and docs/*.md: each block between `<!-- figures:NAME -->`
and `<!-- /figures:NAME -->`, in whichever of those files it lives, is made from a committed
result file in benchmarks/results/, never typed.

    python benchmarks/dev/readme_figures.py --record quickstart/   # copy a quickstart's bench report into results/
    python benchmarks/dev/readme_figures.py                        # rewrite the blocks of README.md and docs/*.md
    python benchmarks/dev/readme_figures.py --check                # exit 1 when a block differs (tests run this)

Every named block below must be in one of those files; include blocks may be anywhere in them.

Blocks:
- include:PATH: a result file a benchmark script wrote (its own title left out, its headings
  demoted to ####), e.g. `<!-- figures:include:benchmarks/results/paper-latency-batch1.md -->`.
- presets: parameters and GFLOPs per preset (benchmarks/results/presets.json, from presets.py).
- preset-table: the CPU-sized presets trained and measured side by side (benchmarks/results/preset-table.json,
  from preset_table.py): test AUC, OpenVINO FP32 / INT8 batch-1 latency, the INT8 verdict.
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

from edgederm.benchmarks.report import quantization_label

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
QUICKSTART = RESULTS / "quickstart.json"
PRESETS = RESULTS / "presets.json"


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
    bound = f"; at most {flips['upper_bound_percent']:.1f} %" if "upper_bound_percent" in flips else ""
    return (f"{flips['rate_percent']:.1f} % ({flips['flips']}: {flips['toward_truth']} toward, "
            f"{flips['away_from_truth']} away{bound})")


def _int8_speedup(report: dict) -> str:
    """OpenVINO INT8 against OpenVINO FP32, model only at batch 1, as a ratio of the same run."""
    rows = {r["name"]: r for r in report["variants"] if r["status"] == "ok"}
    fp32, int8 = (next((r for name, r in rows.items() if name.endswith(f"-openvino-{p}")), None)
                  for p in ("fp32", "int8"))
    if fp32 is None or int8 is None:
        return ""
    instructions = ", ".join(report["host"].get("int8_instructions", [])) or "none"
    ratio = fp32["latency"][0]["mean_ms"] / int8["latency"][0]["mean_ms"]
    how = quantization_label(int8.get("quantization"), int8.get("float_precision"))
    return (f"OpenVINO INT8 ({how + ', ' if how else ''}{int8['verdict']}) runs the model {ratio:.2f}x as fast as "
            f"OpenVINO FP32 (batch 1, "
            f"this run; the CPU's int8 dot-product instructions: {instructions}). ")


def quickstart_block(report: dict) -> str:
    host, gate = report["host"], report["gate"]
    cases = next(r["accuracy"]["cases"] for r in report["variants"] if r["status"] == "ok")
    photo_labels = report.get("photo_sets", [])
    lines = [f"Test split of the synthetic release ({cases} cases), `{report['reference']}` as the reference; "
             f"gate: paired stratified bootstrap, {gate['resamples']} resamples, seed {gate['seed']}, margin "
             f"{gate['max_auc_drop']:g} AUC point on the one-sided 95 % upper bound"
             + (f", at most {gate['max_flip_rate']:g} % of decisions changed" if gate.get("max_flip_rate") is not None
                else "") + f"; {host['cpu']}, "
             f"{host['cores']} cores:", "",
             "| variant | averaged AUC | AUC drop, points [95 % CI] | upper bound | top diagnosis changed | "
             "seven-point reading changed | model only, batch 1 | "
             + "".join(f"end to end, {label} | " for label in photo_labels) + "verdict |",
             "|---|---|---|---|---|---|---|" + "---|" * len(photo_labels) + "---|"]
    for r in report["variants"]:
        if r["status"] == "refused":       # the export's gate on valid: the reason up to the attempts it lists
            lines.append(f"| {r['name']} | refused: {r['error'].split('; tried')[0]} | | | | | |"
                         + " |" * len(photo_labels) + " fail |")
            continue
        if r["status"] != "ok":
            lines.append(f"| {r['name']} | failed: {r['error']} | | | | | |" + " |" * len(photo_labels) + " fail |")
            continue
        auc = r.get("gate", {}).get("auc")
        drop = f"{auc['drop_points']:.2f} [{auc['ci_points'][0]:.2f}, {auc['ci_points'][1]:.2f}]" if auc else "-"
        upper = f"{auc['upper_bound_points']:.2f}" if auc else "-"
        flips = r.get("gate", {}).get("flips", {})
        how = quantization_label(r.get("quantization"), r.get("float_precision"))
        lines.append(f"| {r['name']}{f' ({how})' if how else ''} | {100 * r['accuracy']['avg_auc']:.2f} | {drop} | {upper} | "
                     f"{_flips(flips.get('diagnosis'))} | {_flips(flips.get('seven_point'))} | "
                     f"{r['latency'][0]['mean_ms']:.1f} ms | "
                     + "".join(f"{e['mean_ms']:.0f} ms ({100 * e['decode_preprocess_share']:.0f} % decoding) | "
                               for e in r.get("end_to_end", []))
                     + f"{r['verdict']} |")
    lines += ["", _int8_speedup(report) + f"Fastest variant that passes: **{report['fastest_passing'] or 'none'}**."
              + (f" The quickstart took {report['minutes']:.1f} min, install not included." if "minutes" in report
                 else "")
              + (" By stage: " + ", ".join(f"{name} {seconds:.0f} s"
                                           for name, seconds in report["stage_seconds"].items())
                 + "." if "stage_seconds" in report else "")]
    return "\n".join(lines)


def presets_block(rows: list[dict]) -> str:
    lines = ["| preset | clinical / dermoscopy encoder | fusion | P_FU reads | px | params (M) | GFLOPs | paper (M) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        paper = "-" if r["paper_params_m"] is None else f"{r['paper_params_m']:.2f}"
        architecture = r.get("architecture", "two-encoder")
        encoders = (f"{r['derm_encoder']}, shared" if r.get("shared_encoder")
                    else f"{r['clinical_encoder']} (clinical photo only)" if architecture == "clinical-only"
                    else f"{r['clinical_encoder']} / {r['derm_encoder']}")
        # what joins the inputs: the fusion block, the clinical-only model's task tokens, jif-mmfa's attention
        fusion = {"clinical-only": "task tokens", "jif-mmfa": "MMFA + metadata"}.get(architecture, r["fusion"].upper())
        reads = "-" if architecture == "clinical-only" else f"`{r.get('fusion_features', 'fused')}`"
        lines.append(f"| `{r['preset']}` | {encoders} | {fusion} | {reads} | "
                     f"{r['img_size']} | {r['params_m']:.2f} | {r['gflops']:.2f} | {paper} |")
    return "\n".join(lines)


def include_block(relative: str, where: str = "README.md") -> str:
    """A committed result file, minus its first-level title, its other headings demoted to ####."""
    path = REPO / relative
    if not path.resolve().is_relative_to(RESULTS):
        raise SystemExit(f"{where}: figures:include:{relative} is not under benchmarks/results/")
    lines = path.read_text().strip().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return "\n".join("#### " + line.lstrip("#").strip() if line.startswith("#") else line for line in lines).strip()


def preset_table_block(table: dict) -> str:
    lines = [f"{table['release']}; {table['rows'][0]['cpu']}, batch 1, each preset's own recipe.", "",
             "| preset | params (M) | GFLOPs | px | epochs | test AUC (PyTorch FP32) | OpenVINO FP32 ms | "
             "OpenVINO INT8 ms | INT8 test AUC | INT8 verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table["rows"]:
        int8 = r.get("openvino-int8")
        if r.get("trained", True):
            auc = f"{r['torch-fp32']['auc']:.2f}"
            tail = (f"{int8['ms']:.2f} | {int8['auc']:.2f} | {int8['verdict']}" if int8
                    else "- | - | refused on valid at export")
        else:   # too large to train here: latency of its initial weights only (preset_table.py --latency-only)
            auc, tail = "not trained here", f"{int8['ms']:.2f} | - | -"
        lines.append(f"| `{r['preset']}` | {r['params_m']:.2f} | {r['gflops']:.2f} | {r['img_size']} | {r['epochs']} | "
                     f"{auc} | {r['openvino-fp32']['ms']:.2f} | {tail} |")
    return "\n".join(lines)


BLOCKS = {"quickstart": lambda: quickstart_block(json.loads(QUICKSTART.read_text())),
          "presets": lambda: presets_block(json.loads(PRESETS.read_text())),
          "preset-table": lambda: preset_table_block(json.loads((RESULTS / "preset-table.json").read_text()))}
BLOCK = re.compile(r"(<!-- figures:([\w:./-]+) -->\n).*?(<!-- /figures:\2 -->)", re.S)


OPENING = re.compile(r"<!-- figures:([\w:./-]+) -->")


def render(text: str, where: str = "README.md") -> str:
    """Every figure block of one file remade; `where` names the file in errors."""
    opened = OPENING.findall(text)
    closed = [m.group(2) for m in BLOCK.finditer(text)]
    if opened != closed:
        raise SystemExit(f"{where}: a figure block without its closing <!-- /figures:NAME --> "
                         f"(opened {opened}, closed {closed})")
    for name in opened:
        if not name.startswith("include:") and name not in BLOCKS:
            raise SystemExit(f"{where}: unknown figure block <!-- figures:{name} -->")

    def make(match: re.Match) -> str:
        name = match.group(2)
        body = (include_block(name.removeprefix("include:"), where) if name.startswith("include:")
                else BLOCKS[name]())
        return match.group(1) + body + "\n" + match.group(3)
    return BLOCK.sub(make, text)


def documents(readme: Path, docs: Path) -> list[Path]:
    """The files whose figure blocks are generated: the README, then every Markdown page of docs/."""
    return [readme] + sorted(docs.glob("*.md"))


def render_all(paths: list[Path]) -> dict[Path, tuple[str, str]]:
    """Each file's (current, wanted) text; every named block must be in one of the files."""
    texts = {path: path.read_text() for path in paths}
    for name in BLOCKS:
        if not any(f"<!-- figures:{name} -->" in text for text in texts.values()):
            raise SystemExit(f"no <!-- figures:{name} --> block in {', '.join(str(p) for p in paths)}")
    return {path: (text, render(text, str(path))) for path, text in texts.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    parser.add_argument("--docs", type=Path, help="The folder of Markdown pages (default: docs/ beside --readme).")
    parser.add_argument("--check", action="store_true", help="Exit 1 when a file's blocks differ.")
    parser.add_argument("--record", type=Path, help="A quickstart folder whose report to record first.")
    args = parser.parse_args()
    if args.record:
        print(f"recorded {record_quickstart(args.record)}")
    rendered = render_all(documents(args.readme, args.docs or args.readme.parent / "docs"))
    differ = [path for path, (current, wanted) in rendered.items() if wanted != current]
    if args.check:
        for path in differ:
            print(f"{path}: figures differ from benchmarks/results/; run python benchmarks/dev/readme_figures.py",
                  file=sys.stderr)
        if differ:
            return 1
        print(f"{len(rendered)} files ({args.readme} and docs/*.md): figures match benchmarks/results/")
        return 0
    for path in differ:
        path.write_text(rendered[path][1])
        print(f"wrote {path}")
    if not differ:
        print("no figure changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
