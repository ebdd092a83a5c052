"""Bench reports: report.json (everything), report.md, and report.html, one
self-contained page (tables as HTML, verdicts coloured, confidence intervals
and decision flips shown, plots embedded as PNG data, no network) that reads
on a phone. The terminal summary (`summary_lines`) comes from here too.

matplotlib is the `report` extra: a device with the base install writes the
same report without the plots, and the page says how to get them."""
from __future__ import annotations

import base64
import html
import io
import json
import os
from importlib.util import find_spec
from pathlib import Path

from edgederm.scoring.calibration import describe_operating_point
from edgederm.scoring.gate import CONFIDENT_MARGIN

PLOTS_NEED = "plots need matplotlib: pip install 'edgederm[report]'"


def _fmt(value, spec=".2f", scale=1.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def _ci(interval) -> str:
    return "-" if not interval else f"[{interval[0]:.2f}, {interval[1]:.2f}]"


def quantization_label(quantization: dict | None, float_precision: str | None = None) -> str | None:
    """'QAT; clinical encoder fp32': how an INT8 bundle was quantized (its manifest's `quantization`, the
    attempt the export's gate chose) and what it kept in float, in the precision those operations ran in
    (`float_precision` read back from the backend; f32 where it cannot say). None for a float bundle."""
    if not quantization or "method" not in quantization:
        return None
    method, kept = quantization["method"], quantization.get("kept_in_float") or []
    ran = "bf16" if float_precision == "bf16" else "fp16" if float_precision == "f16" else "fp32"
    if method.startswith("QAT"):          # kept: whole encoders by attribute name
        return "QAT" + "".join(f"; {name.replace('_', ' ')} {ran}" for name in kept)
    if method.startswith("NNCF accuracy control"):
        return f"accuracy control; {len(kept)} op(s) {ran}"
    if kept:                              # blocks (module paths) in float
        return f"PTQ; {len(kept)} block(s) {ran}"
    return "PTQ"


def _precision_cell(row: dict) -> str:
    """'int8 (QAT; clinical encoder fp32; float ops f32)': the bundle's precision, how it was quantized and
    what stayed in float, and, where the backend reads it back, the precision its float operations really
    ran in (reports written before these were recorded show what they have)."""
    ran = row.get("float_precision")
    quantized = quantization_label(row.get("quantization"), ran)
    if row.get("runs_as"):     # a TensorRT engine: its flags and FP32 pins say more (edgederm/runtime/engine.py)
        cell = row["runs_as"] + (f"; {quantized}" if quantized else "")
        return cell + (f", TTA {len(row['tta'])} views" if row.get("tta") else "")
    notes = [n for n in (quantized, ran and f"float ops {ran}") if n]
    cell = f"{row['precision']} ({'; '.join(notes)})" if notes else row["precision"]
    return cell + (f", TTA {len(row['tta'])} views" if row.get("tta") else "")


def _flip_cell(flips: dict | None) -> str:
    """'2.1 % (5; 1 confident, 1 toward, 3 away; at most 4.5 %)' for one decision: rate, count, how many
    overturned a clear FP32 call (margin > CONFIDENT_MARGIN), direction and the one-sided 95 % upper bound
    of the rate."""
    if not flips:
        return "-"
    bound = f"; at most {flips['upper_bound_percent']:.1f} %" if "upper_bound_percent" in flips else ""
    # reports written before confident flips were counted have no count: the cell then leaves it out
    confident = (f"{flips['confident_flips']} confident, " if "confident_flips" in flips else "")
    return (f"{flips['rate_percent']:.1f} % ({flips['flips']}; {confident}{flips['toward_truth']} toward, "
            f"{flips['away_from_truth']} away{bound})")


def _melanoma_cell(mel: dict | None) -> str:
    """'54.5 -> 48.5 % of 33' : melanomas the seven-point reading refers, reference -> variant."""
    if not mel or mel.get("melanomas", 0) == 0:
        return "-"
    mark = " (significant loss)" if mel["significant"] else ""
    return f"{mel['reference_percent']:.1f} -> {mel['variant_percent']:.1f} % of {mel['melanomas']}{mark}"


def host_line(report: dict) -> str:
    host = report["host"]
    return (f"{host['cpu']}, {host['cores']} cores, {host['memory_gib']} GiB, {host['os']}; int8 instructions: "
            f"{', '.join(host['int8_instructions']) or 'none'}; device {report['device']}")


def gate_line(report: dict) -> str:
    g = report["gate"]
    flips = (f"; decision flips gated at {g['max_flip_rate']:g} % of cases (observed rate; its one-sided 95 % "
             "Clopper-Pearson bound is shown), and a significant loss of melanomas referred by the seven-point "
             "reading fails" if g["max_flip_rate"] is not None else "; decision flips reported, not gated")
    flips += ("; a flip is \"confident\" when the FP32 decision's margin (top probability minus the second, or "
              f"how far the seven-point reading was from changing) exceeds {CONFIDENT_MARGIN:g}")
    readings = sorted({v["gate"]["seven_point_reading"] for v in report.get("variants", [])
                       if v.get("gate") and "seven_point_reading" in v["gate"]})
    reading = f" Seven-point reading: {'; '.join(readings)}." if readings else ""
    return (f"Gate against `{report['reference']}`: {g['method']}; margin {g['max_auc_drop']:g} AUC points; "
            f"{g['resamples']} resamples, seed {g['seed']}; a category with fewer than {g['min_positives']} "
            f"positives (or negatives) is not gated, one fails only when its drop is significant and over "
            f"{2 * g['max_auc_drop']:g} points{flips}.{reading}")


def _reasons(row: dict, reference: str | None) -> list[str]:
    """Why a row got its verdict: the gate's reasons, what it was gated against when not the bench's reference (a
    TTA bundle against the FP32 bundle of its views), why it could not be compared, or that its engine was built
    --ungated."""
    if row.get("not_comparable"):
        return [row["not_comparable"]]
    reasons = list(row.get("gate", {}).get("reasons", []))
    if row.get("gated_against") and row["gated_against"] != reference:
        reasons.insert(0, f"gated against {row['gated_against']}, its own weights and views")
    if row.get("engine_ungated"):
        reasons.append("engine built with --ungated from a graph the export's gate did not pass")
    return reasons


def summary_rows(report: dict) -> list[dict]:
    """One flat row per variant: what the terminal, the Markdown and the HTML summary tables show."""
    rows = []
    for r in report["variants"]:
        if r["status"] != "ok":
            rows.append({"variant": r["name"], "error": r["error"], "verdict": "fail"})
            continue
        gate = r.get("gate", {})
        auc = gate.get("auc", {})
        rows.append({
            "variant": r["name"], "backend": r["backend"], "precision": _precision_cell(r),
            "mean_ms": r["latency"][0]["mean_ms"], "p50_ms": r["latency"][0]["p50_ms"],
            "avg_auc": r["accuracy"]["avg_auc"] if "accuracy" in r else None,
            "drop": auc.get("drop_points"), "ci": auc.get("ci_points"), "upper": auc.get("upper_bound_points"),
            "diagnosis_flips": gate.get("flips", {}).get("diagnosis"),
            "seven_point_flips": gate.get("flips", {}).get("seven_point"),
            "melanoma_sensitivity": gate.get("melanoma_sensitivity"),
            "verdict": r["verdict"], "reasons": _reasons(r, report.get("reference")),
        })
    return rows


def summary_lines(report: dict) -> list[str]:
    """The verdict table for a terminal."""
    lines = [f"{'variant':<34} {'ms':>7} {'AUC':>6} {'drop [95% CI]':>22} {'dx flips':>8} {'7pt flips':>9}  verdict"]
    for row in summary_rows(report):
        if "error" in row:
            lines.append(f"{row['variant']:<34} failed: {row['error']}")
            continue
        drop = "-" if row["drop"] is None else f"{row['drop']:.2f} {_ci(row['ci'])}"
        dx, sp = row["diagnosis_flips"], row["seven_point_flips"]
        lines.append(f"{row['variant']:<34} {row['mean_ms']:7.2f} {_fmt(row['avg_auc'], '.2f', 100):>6} {drop:>22} "
                     f"{_fmt(dx and dx['rate_percent'], '.1f'):>7}% {_fmt(sp and sp['rate_percent'], '.1f'):>8}%  "
                     f"{row['verdict']}" + (f" ({'; '.join(row['reasons'])})" if row["reasons"] else ""))
    lines.append(f"fastest variant that passes: {report['fastest_passing'] or 'none'}")
    lines += [f"{r['name']}: TTA with {r['tta_latency_cost']['views']} views takes "
              f"{r['tta_latency_cost']['ratio']:.2f}x the latency of {r['tta_latency_cost']['versus']}"
              for r in report["variants"] if r.get("tta_latency_cost")]
    points = [(v["name"], _calibration(v)["operating_point"]) for v in report["variants"]
              if (_calibration(v) or {}).get("operating_point")]
    if points:
        lines.append(describe_operating_point(points[0][1]).split(":")[0] + ", per variant:")
        lines += [f"  {name:<32} sensitivity {_fmt(op['sensitivity'], '.1f', 100)} %, specificity "
                  f"{_fmt(op['specificity'], '.1f', 100)} %, {op['referred_percent']:.1f} % referred"
                  for name, op in points]
    return lines


E2E_HEADER = ["variant", "photos", "decode", "end to end ms (mean)", "p50", "p90", "p99", "decode + preprocess ms",
              "inference ms", "decode + preprocess share", "model-only ms"]


def end_to_end_rows(report: dict) -> list[list[str]]:
    """Per variant and photo set: the wait for a pair of photos, beside the model call alone."""
    rows = []
    for r in report["variants"]:
        for e2e in r.get("end_to_end", []) if r["status"] == "ok" else []:
            rows.append([r["name"], e2e["photos"], r.get("decode", "full"), _fmt(e2e["mean_ms"]), _fmt(e2e["p50_ms"]),
                         _fmt(e2e["p90_ms"]), _fmt(e2e["p99_ms"]), _fmt(e2e["decode_preprocess_ms"]),
                         _fmt(e2e["inference_ms"]), f"{100 * e2e['decode_preprocess_share']:.0f} %",
                         _fmt(r["latency"][0]["mean_ms"])])
    return rows


def _calibration(variant: dict) -> dict | None:
    """A variant's calibration figures (older reports name them `clinical`)."""
    return variant.get("calibration", variant.get("clinical"))


def clinic_table(report: dict) -> tuple[str, list[str], list[list[str]]] | None:
    """Per variant: calibration error after the reference's temperatures, and DIAG MEL sensitivity /
    specificity of the three readings at the reference's valid-chosen thresholds: (intro, header, rows),
    or None when the reference carries no fit."""
    variants = [v for v in report["variants"] if _calibration(v)]
    if not variants:
        return None
    first = _calibration(variants[0])["melanoma"]
    readings = [(k, title) for k, title in (("seven_point_argmax", "checklist >= 3"),
                                            ("seven_point_expected", "expected score"),
                                            ("melanoma_probability", "P(MEL)")) if k in first]
    thresholds = "".join(f", {title} at {first[k]['threshold']:.3g}" for k, title in readings[1:])
    intro = ("With the reference bundle's temperatures and thresholds (fitted on valid at training; a bundle with "
             "test-time views built in reads with its own, refitted on its views): mean expected "
             f"calibration error over the 8 tasks, and sensitivity / specificity for DIAG MEL "
             f"({first['seven_point_argmax']['positives']} melanomas) of each reading{thresholds}.")
    intro += (" The clinic's operating point is the reading `diagnose` reports (the expected score when valid "
              "chose its threshold): the share of patients it refers is what a clinic plans by; beside it, what "
              "that reading gave on valid, where its threshold was chosen.")
    header = (["variant", "mean ECE (%)"] + [f"{title} sens / spec" for _, title in readings]
              + ["clinic: spec / referred", "on valid: spec @ sens"])
    rows = []
    for v in variants:
        c = _calibration(v)
        op = c.get("operating_point")
        rows.append([v["name"], f"{sum(c['ece_percent'].values()) / len(c['ece_percent']):.1f}"]
                    + [f"{_fmt(c['melanoma'][k]['sensitivity'], '.1f', 100)} / "
                       f"{_fmt(c['melanoma'][k]['specificity'], '.1f', 100)}" for k, _ in readings]
                    + ["-" if op is None
                       else f"{_fmt(op['specificity'], '.1f', 100)} / {op['referred_percent']:.1f} %"]
                    + [_valid_point(c.get("valid_operating_point"))])
    return intro, header, rows


def _valid_point(op: dict | None) -> str:
    """The clinic's reading on valid, where its threshold was chosen ("-" for fits that predate the record)."""
    if not op:
        return "-"
    return f"{_fmt(op['specificity'], '.1f', 100)} @ {_fmt(op['sensitivity'], '.1f', 100)}"


def clinic_lines(report: dict) -> list[str]:
    table = clinic_table(report)
    if table is None:
        return []
    intro, header, rows = table
    return (["", "## Calibration and melanoma operating points", "", intro, "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)] + ["| " + " | ".join(row) + " |" for row in rows])


def markdown(report: dict) -> str:
    lines = ["# EdgeDerm bench", "", f"Host: {host_line(report)}.",
             "Libraries: " + ", ".join(f"{k} {v}" for k, v in report["host"]["libraries"].items()) + ".", ""]
    if report["host"].get("jetson"):
        lines += [f"Jetson: {report['host']['jetson']}", f"tegrastats: {report.get('jetson_telemetry')}", ""]
    rounds = report.get("rounds", 1)
    lines += [f"Warm-up {report['warmup']}, {report['runs']} timed runs per batch size"
              + (f", in {rounds} round-robin rounds over the variants, pooled" if rounds > 1 else "")
              + "; latency is the model call on preprocessed inputs.", "",
              "| variant | backend | precision | batch | mean ms | p50 | p90 | p99 | per s | vs reference | vs own PyTorch FP32 | load s | peak RSS MiB (added by it) | MB |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["variants"]:
        if r["status"] != "ok":
            lines.append(f"| {r['name']} | failed: {r['error']} |" + " |" * 12)
            continue
        for lat in r["latency"]:
            first = lat is r["latency"][0]
            ratio = r.get("speedup_vs_reference") if first else None
            own = r.get("speedup_vs_own_torch_fp32") if first else None
            lines.append(f"| {r['name']} | {r['backend']} | {_precision_cell(r)} | {lat['batch']} | {lat['mean_ms']:.2f} | "
                         f"{lat['p50_ms']:.2f} | {lat['p90_ms']:.2f} | {lat['p99_ms']:.2f} | {lat['throughput_per_s']:.1f} | "
                         f"{_fmt(ratio, '.2f')}{'x' if ratio else ''} | {_fmt(own, '.2f')}{'x' if own else ''} | {r['load_s']:.2f} | {_fmt(r['peak_rss_mib'], '.0f')} (+{_fmt(r.get('peak_rss_added_mib'), '.0f')}) | "
                         f"{r['size_mb']:.1f} |")
    costs = [r for r in report["variants"] if r.get("tta_latency_cost")]
    if costs:
        lines += [""] + [f"- {r['name']}: test-time augmentation, {r['tta_latency_cost']['views']} views in one call, "
                         f"takes {r['tta_latency_cost']['ratio']:.2f}x the latency of {r['tta_latency_cost']['versus']}."
                         for r in costs]
    e2e = end_to_end_rows(report)
    if e2e:
        lines += ["", "## End to end: a pair of photos, decoded, preprocessed and inferred", "",
                  f"Batch 1, {report.get('e2e_runs')} timed pairs per photo set after one untimed; the two photos of a "
                  "pair are decoded on two threads.", "",
                  "| " + " | ".join(E2E_HEADER) + " |", "|" + "---|" * len(E2E_HEADER)]
        lines += ["| " + " | ".join(row) + " |" for row in e2e]
    if report["data"]:
        lines += ["", f"## Accuracy and decisions: {report['split']} split of {report['data']}", ""]
        if report["reference"]:
            lines += [gate_line(report), ""]
        lines += ["| variant | avg AUC | AUC drop (points) [95 % CI] | upper bound | diagnosis flips | seven-point flips | melanomas referred (seven-point) | verdict |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in summary_rows(report):
            if "error" in row:
                lines.append(f"| {row['variant']} | - | - | - | - | - | - | fail |")
                continue
            lines.append(f"| {row['variant']} | {_fmt(row['avg_auc'], '.2f', 100)} | {_fmt(row['drop'])} {_ci(row['ci'])} | "
                         f"{_fmt(row['upper'])} | {_flip_cell(row['diagnosis_flips'])} | "
                         f"{_flip_cell(row['seven_point_flips'])} | {_melanoma_cell(row['melanoma_sensitivity'])} | "
                         f"{row['verdict']} |")
        failing = [(r["variant"], r["reasons"]) for r in summary_rows(report) if r.get("reasons")]
        lines += [""] + [f"- {name} fails: {'; '.join(reasons)}" for name, reasons in failing]
        lines += clinic_lines(report)
    gated = report["data"] and report["reference"]
    lines += ["", f"Fastest variant {'that passes the gate' if gated else '(speed only: no accuracy gate without --data and --reference)'}: "
              f"**{report['fastest_passing'] or 'none'}**."]
    return "\n".join(lines) + "\n"


def _png(fig) -> str:
    import matplotlib.pyplot as plt
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def plots(report: dict) -> dict[str, str]:
    """PNG plots, base64-encoded, by name; none without matplotlib."""
    if find_spec("matplotlib") is None:
        return {}
    import matplotlib
    matplotlib.use("Agg")          # no display on a Jetson or in CI
    import matplotlib.pyplot as plt
    ok = [r for r in report["variants"] if r["status"] == "ok"]
    out = {}
    if ok:
        fig, ax = plt.subplots(figsize=(8, 0.6 * len(ok) + 1.5))
        ax.boxplot([r["latency"][0]["times_ms"] for r in ok], orientation="horizontal", showfliers=True)
        ax.set_yticks(range(1, len(ok) + 1), [r["name"] for r in ok])
        ax.set_xlabel(f"latency, ms (batch {ok[0]['latency'][0]['batch']})")
        ax.set_title("Latency distribution per variant")
        out["latency"] = _png(fig)
    gated = [r for r in ok if "gate" in r]
    if gated:
        categories = list(gated[0]["gate"]["auc"]["categories"])
        fig, ax = plt.subplots(figsize=(10, 4.5))
        width = 0.8 / len(gated)
        for i, r in enumerate(gated):
            cats = r["gate"]["auc"]["categories"]
            x = [k + i * width for k in range(len(categories))]
            drops = [-(cats[c]["drop_points"] or 0.0) for c in categories]
            low = [d - (-cats[c]["ci_points"][1]) if cats[c]["ci_points"] else 0 for c, d in zip(categories, drops)]
            high = [(-cats[c]["ci_points"][0]) - d if cats[c]["ci_points"] else 0 for c, d in zip(categories, drops)]
            ax.bar(x, drops, width, yerr=[low, high], capsize=2, label=r["name"])
        ax.axhline(-report["gate"]["max_auc_drop"] * 2, color="red", linestyle="--", linewidth=1,
                   label="category limit (when significant)")
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(categories))], categories, rotation=60, ha="right")
        ax.set_ylabel("AUC difference from reference, points")
        ax.set_title(f"Per-category AUC difference from {report['reference']}, 95 % bootstrap intervals")
        ax.legend(fontsize=7)
        out["auc_difference"] = _png(fig)
    return out


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1100px;padding:12px;
     color:#1b1b1b;line-height:1.4}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}
th{background:#f2f2f2}
.verdict{font-weight:600;border-radius:3px;padding:1px 6px}
.pass{background:#d8f0d8;color:#175c17}.fail{background:#f8d4d4;color:#8a1414}
.reference{background:#dde6f5;color:#1e3f73}.not-comparable{background:#fbe6c8;color:#7a4a06}.not-gated,.no-AUC,.ok{background:#eee;color:#444}
.note{color:#555;font-size:.9em}
img{max-width:100%;height:auto}
details{margin:.4em 0}
"""


def _table(header: list[str], rows: list[list[str]], table_id: str | None = None) -> str:
    """Cells are already-escaped HTML."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    ident = f' id="{table_id}"' if table_id else ""
    return f'<div class="scroll"><table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _verdict(verdict: str) -> str:
    return f'<span class="verdict {html.escape(verdict.replace(" ", "-"))}">{html.escape(verdict)}</span>'


# The page's sections in reading order, each a few lines; split up, the order would be harder to see.
def html_page(report: dict) -> str:
    e = html.escape
    parts = [f"<h1>EdgeDerm bench</h1><p class='note'>Host: {e(host_line(report))}.</p>"]
    rows = []
    for row in summary_rows(report):       # verdict second: on a phone the first columns are what shows
        if "error" in row:
            rows.append([e(row["variant"]), _verdict("fail"), f"failed: {e(row['error'])}", "", "", "", "", "", "", ""])
            continue
        rows.append([e(row["variant"]), _verdict(row["verdict"]), _fmt(row["mean_ms"]), _fmt(row["avg_auc"], ".2f", 100),
                     f"{_fmt(row['drop'])} {_ci(row['ci'])}", _fmt(row["upper"]), e(_flip_cell(row["diagnosis_flips"])),
                     e(_flip_cell(row["seven_point_flips"])), e(_melanoma_cell(row["melanoma_sensitivity"])),
                     e(f"{row['backend']} {row['precision']}")])
    parts.append("<h2>Verdicts</h2>" + _table(
        ["variant", "verdict", "mean ms", "avg AUC", "AUC drop, points [95 % CI]", "upper bound",
         "diagnosis flips", "seven-point flips", "melanomas referred (seven-point)", "backend"], rows, "verdicts"))
    if report.get("reference") and report.get("data"):
        parts.append(f"<p class='note'>{e(gate_line(report).replace('`', ''))}</p>")
    for row in summary_rows(report):
        if row.get("reasons"):
            parts.append(f"<p><b>{e(row['variant'])}</b> fails: {e('; '.join(row['reasons']))}</p>")
    parts.append(f"<p>Fastest variant that passes: <b>{e(str(report['fastest_passing'] or 'none'))}</b></p>")

    latency_rows = [[e(r["name"]), str(lat["batch"]), _fmt(lat["mean_ms"]), _fmt(lat["p50_ms"]), _fmt(lat["p90_ms"]),
                     _fmt(lat["p99_ms"]), _fmt(lat["throughput_per_s"], ".1f"), _fmt(r.get("peak_rss_mib"), ".0f"),
                     _fmt(r["size_mb"], ".1f")]
                    for r in report["variants"] if r["status"] == "ok" for lat in r["latency"]]
    parts.append("<h2>Latency</h2>" + _table(["variant", "batch", "mean ms", "p50", "p90", "p99", "per s",
                                               "peak RSS MiB", "MB"], latency_rows))
    clinic = clinic_table(report)
    if clinic:
        intro, header, rows = clinic
        parts.append("<h2>Calibration and melanoma operating points</h2>"
                     f"<p class='note'>{e(intro)}</p>" + _table(header, [[e(c) for c in row] for row in rows],
                                                                "clinic"))
    e2e = end_to_end_rows(report)
    if e2e:
        parts.append("<h2>End to end: photos to answer</h2>"
                     + _table(E2E_HEADER, [[e(cell) for cell in row] for row in e2e], "end-to-end"))

    for r in report["variants"]:
        if "gate" not in r:
            continue
        cats = r["gate"]["auc"]["categories"]
        cat_rows = [[e(name), str(c["positives"]), _fmt(c["drop_points"]), _ci(c["ci_points"]), _verdict(c["status"])]
                    for name, c in cats.items()]
        flips = []
        for key, title in (("diagnosis", "top diagnosis"), ("seven_point", "seven-point reading")):
            f = r["gate"]["flips"][key]
            items = "".join(f"<tr><td>{e(x['case_id'])}</td><td>{e(x['reference'])}</td><td>{e(x['variant'])}</td>"
                            f"<td>{e(x['truth'])}</td><td>{e(x['direction'])}</td></tr>" for x in f["flipped"])
            flips.append(f"<details><summary>{e(title)}: {e(_flip_cell(f))} of {f['cases']} cases</summary>"
                         f"<div class='scroll'><table><thead><tr><th>case</th><th>reference</th><th>variant</th>"
                         f"<th>truth</th><th>direction</th></tr></thead><tbody>{items}</tbody></table></div></details>")
        parts.append(f"<h2>{e(r['name'])}: categories and flipped cases</h2>"
                     + _table(["category", "positives", "drop, points", "95 % CI", "status"], cat_rows)
                     + "".join(flips))

    images = plots(report)
    for name, data in images.items():
        parts.append(f"<h2>{e(name.replace('_', ' '))}</h2><img alt='{e(name)}' src='data:image/png;base64,{data}'>")
    if find_spec("matplotlib") is None:
        parts.append(f"<p class='note'>({e(PLOTS_NEED)})</p>")
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>EdgeDerm bench</title><style>{_CSS}</style></head><body>{''.join(parts)}</body></html>\n")


def write_reports(report: dict, folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "report.json", "md": folder / "report.md", "html": folder / "report.html"}
    texts = {"json": json.dumps(report, indent=2) + "\n", "md": markdown(report), "html": html_page(report)}
    for key, text in texts.items():
        tmp = paths[key].with_name(paths[key].name + ".partial")
        tmp.write_text(text)
        os.replace(tmp, paths[key])
    return paths
