"""The clinic app under load: `edgederm serve` as its own process on 127.0.0.1,
then N requests (each a whole case: two photos uploaded, decoded, predicted,
stored durably) from C concurrent clients, against the single-request latency
measured first on the same server.

    python benchmarks/dev/serve_load.py --bundle exports/tiny-openvino-int8 --data quickstart/synth \
        [--requests 200] [--clients 8] [--single 20] [--time-limit 600] [--out benchmarks/results]

Bounded: the load stops sending after --time-limit seconds, and every request
has a 60 s timeout (a timeout counts as an error). Photos are the --data
release's test pairs (768 x 512), cycled. The cases land in a temporary data
folder, removed afterwards. Prints the figures; with --out also writes
serve-load.json and serve-load.md there.

The goal (issue #17): 0 errors and p95 <= 3x the single-request latency.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from edgederm.benchmarks.host import host_facts
from edgederm.data.release import read_release
from edgederm.serve.process import ServerProcess

GOAL_RATIO = 3.0
REQUEST_TIMEOUT = 60.0


def _pairs(data: Path, count: int = 32) -> list[dict]:
    cases = read_release(data).split("test")[:count]
    return [{"clinical": (c.clinical.name, c.clinical.read_bytes(), "image/jpeg"),
             "derm": (c.derm.name, c.derm.read_bytes(), "image/jpeg")} for c in cases]


def _post(client: httpx.Client, url: str, files: dict) -> tuple[float, str | None]:
    """(seconds, None) for a stored case; (seconds, why) otherwise."""
    started = time.perf_counter()
    try:
        response = client.post(url + "api/cases", files=files, timeout=REQUEST_TIMEOUT)
        error = None if response.status_code == 201 else f"HTTP {response.status_code}: {response.text[:200]}"
    except httpx.HTTPError as e:
        error = f"{type(e).__name__}: {e}"
    return time.perf_counter() - started, error


def _percentiles(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1000
    return {"n": len(ms), "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "max_ms": float(ms.max()), "mean_ms": float(ms.mean())}


def run_load(bundle: Path, data: Path, requests: int, clients: int, single: int, time_limit: float) -> dict:
    pairs = _pairs(data)
    with tempfile.TemporaryDirectory(prefix="edgederm-serve-load-") as tmp, ServerProcess(bundle, Path(tmp)) as server:
        with httpx.Client() as client:
            for files in pairs[:2]:                                   # warm-up: not timed
                _post(client, server.url, files)
            alone = [_post(client, server.url, pairs[i % len(pairs)]) for i in range(single)]
        single_errors = [e for _, e in alone if e]

        local = threading.local()

        def one(i: int) -> tuple[float, str | None]:
            if time.perf_counter() > deadline:
                return 0.0, "not sent: --time-limit reached"
            if not hasattr(local, "client"):
                local.client = httpx.Client()
            return _post(local.client, server.url, pairs[i % len(pairs)])

        started = time.perf_counter()
        deadline = started + time_limit
        with ThreadPoolExecutor(max_workers=clients) as pool:
            results = list(pool.map(one, range(requests)))
        wall = time.perf_counter() - started
    errors = [e for _, e in results if e]
    answered = [s for s, e in results if e is None]
    single_stats = _percentiles([s for s, e in alone if e is None])
    load_stats = _percentiles(answered) if answered else None
    ratio = load_stats["p95_ms"] / single_stats["p50_ms"] if load_stats else None
    return {
        "bundle": bundle.name, "data": str(data), "photos": "test split pairs, 768 x 512 JPEG",
        "host": host_facts(), "clients": clients, "requests": requests, "time_limit_s": time_limit,
        "single": {**single_stats, "errors": len(single_errors)},
        "load": {**(load_stats or {}), "errors": len(errors), "error_examples": sorted(set(errors))[:5],
                 "wall_s": wall, "cases_per_s": len(answered) / wall},
        "p95_over_single_p50": ratio,
        "goal": f"0 errors and p95 <= {GOAL_RATIO:g}x the single-request latency",
        "goal_met": not errors and ratio is not None and ratio <= GOAL_RATIO,
    }


def markdown(r: dict) -> str:
    s, load = r["single"], r["load"]
    cpu = r["host"].get("cpu", "?")
    lines = [f"# The clinic app under load ({r['bundle']})", "",
             f"`edgederm serve` on 127.0.0.1, {cpu}, {r['host'].get('cores', '?')} cores; each request a whole "
             f"case ({r['photos']}: upload, decode, predict, stored durably in SQLite).", "",
             "| | requests | errors | p50 | p95 | max | cases/s |", "|---|---|---|---|---|---|---|",
             f"| one client, one at a time | {s['n']} | {s['errors']} | {s['p50_ms']:.0f} ms | {s['p95_ms']:.0f} ms | "
             f"{s['max_ms']:.0f} ms | {1000 / s['mean_ms']:.1f} |"]
    if "p50_ms" in load:
        lines.append(f"| {r['clients']} clients at once | {load['n']} | {load['errors']} | {load['p50_ms']:.0f} ms | "
                     f"{load['p95_ms']:.0f} ms | {load['max_ms']:.0f} ms | {load['cases_per_s']:.1f} |")
    verdict = "met" if r["goal_met"] else "not met"
    ratio = "-" if r["p95_over_single_p50"] is None else f"{r['p95_over_single_p50']:.1f}x"
    lines += ["", f"p95 under load / single-request p50: **{ratio}**; goal ({r['goal']}): **{verdict}**."]
    if "p50_ms" in load:
        # Little's law: C clients that always have a request out wait C / throughput on average.
        needed = r["clients"] / (GOAL_RATIO * s["p50_ms"] / 1000)
        lines += ["", f"With {r['clients']} clients always waiting, the mean wait is {r['clients']} / throughput "
                      f"(Little's law): {r['clients']} / {load['cases_per_s']:.1f} cases/s = "
                      f"{1000 * r['clients'] / load['cases_per_s']:.0f} ms. The goal needs {needed:.0f} cases/s, "
                      f"{needed * s['mean_ms'] / 1000:.1f}x what one client gets; here the server, shared with the "
                      f"load generator on {r['host'].get('cores', '?')} cores, reached "
                      f"{load['cases_per_s'] * s['mean_ms'] / 1000:.1f}x."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="A release whose test pairs are sent.")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--single", type=int, default=20, help="Requests timed one at a time first.")
    parser.add_argument("--time-limit", type=float, default=600.0, help="Seconds the load may take at most.")
    parser.add_argument("--out", type=Path, help="Folder for serve-load.json and serve-load.md.")
    args = parser.parse_args()
    result = run_load(args.bundle, args.data, args.requests, args.clients, args.single, args.time_limit)
    text = markdown(result)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "serve-load.json").write_text(json.dumps(result, indent=1) + "\n")
        (args.out / "serve-load.md").write_text(text)
        print(f"wrote {args.out / 'serve-load.json'} and {args.out / 'serve-load.md'}")
    return 0 if result["goal_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
