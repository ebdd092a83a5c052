"""Bench reports: report.json, report.md and a self-contained report.html with
matplotlib plots (latency distribution per variant; per-category AUC
difference from the reference) embedded as PNG data.

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

PLOTS_NEED = "plots need matplotlib: pip install 'edgederm[report]'"


def _fmt(value, spec=".2f", scale=1.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def markdown(report: dict) -> str:
    host = report["host"]
    lines = ["# EdgeDerm bench", "",
             f"Host: {host['cpu']}, {host['cores']} cores, {host['memory_gib']} GiB, {host['os']}; "
             f"int8 instructions: {', '.join(host['int8_instructions']) or 'none'}; device {report['device']}.",
             "Libraries: " + ", ".join(f"{k} {v}" for k, v in host["libraries"].items()) + ".", ""]
    if host.get("jetson"):
        lines += [f"Jetson: {host['jetson']}", f"tegrastats: {report.get('jetson_telemetry')}", ""]
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
            lines.append(f"| {r['name']} | {r['backend']} | {r['precision']} | {lat['batch']} | {lat['mean_ms']:.2f} | "
                         f"{lat['p50_ms']:.2f} | {lat['p90_ms']:.2f} | {lat['p99_ms']:.2f} | {lat['throughput_per_s']:.1f} | "
                         f"{_fmt(ratio, '.2f')}{'x' if ratio else ''} | {_fmt(own, '.2f')}{'x' if own else ''} | {r['load_s']:.2f} | {_fmt(r['peak_rss_mib'], '.0f')} (+{_fmt(r.get('peak_rss_added_mib'), '.0f')}) | "
                         f"{r['size_mb']:.1f} |")
    if report["data"]:
        lines += ["", f"## Accuracy: {report['split']} split of {report['data']}", "",
                  f"Gate: averaged-AUC drop within {report['max_auc_drop']} points of `{report['reference']}` and no "
                  f"category dropping more than {2 * report['max_auc_drop']} points.", "",
                  "| variant | cases | avg AUC | avg ACC | AUC drop (points) | worst category drop | verdict |",
                  "|---|---|---|---|---|---|---|"]
        for r in report["variants"]:
            acc = r.get("accuracy")
            if not acc:
                lines.append(f"| {r['name']} | - | - | - | - | - | {r.get('verdict', 'fail')} |")
                continue
            lines.append(f"| {r['name']} | {acc['cases']} | {100 * acc['avg_auc']:.2f} | {100 * acc['avg_acc']:.2f} | "
                         f"{_fmt(r.get('auc_drop_points'))} | {_fmt(r.get('worst_category_drop_points'))} | {r['verdict']} |")
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
    with_drops = [r for r in ok if r.get("category_drop_points") and r.get("verdict") != "reference"]
    if with_drops:
        categories = list(with_drops[0]["category_drop_points"])
        fig, ax = plt.subplots(figsize=(10, 4))
        width = 0.8 / len(with_drops)
        for i, r in enumerate(with_drops):
            values = [-(r["category_drop_points"][c] or 0.0) for c in categories]
            ax.bar([x + i * width for x in range(len(categories))], values, width, label=r["name"])
        ax.axhline(-report["max_auc_drop"] * 2, color="red", linestyle="--", linewidth=1, label="category gate")
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(categories))], categories, rotation=60, ha="right")
        ax.set_ylabel("AUC difference from reference, points")
        ax.set_title(f"Per-category AUC difference from {report['reference']}")
        ax.legend(fontsize=7)
        out["auc_difference"] = _png(fig)
    return out


def write_reports(report: dict, folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    md = markdown(report)
    images = plots(report)
    body = "".join(f'<h2>{html.escape(k.replace("_", " "))}</h2><img alt="{k}" src="data:image/png;base64,{v}">'
                   for k, v in images.items())
    if find_spec("matplotlib") is None:
        body += f"<p>({html.escape(PLOTS_NEED)})</p>"
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>EdgeDerm bench</title></head><body>"
            f"<pre>{html.escape(md)}</pre>{body}</body></html>")
    paths = {"json": folder / "report.json", "md": folder / "report.md", "html": folder / "report.html"}
    for key, text in (("json", json.dumps(report, indent=2) + "\n"), ("md", md), ("html", page)):
        tmp = paths[key].with_name(paths[key].name + ".partial")
        tmp.write_text(text)
        os.replace(tmp, paths[key])
    return paths
