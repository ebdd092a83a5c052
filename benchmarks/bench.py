"""`edgederm bench`: latency, memory and accuracy of bundles side by side, with
the FP32-reference gate.

For each variant: load time; at each batch size a warm-up then N timed runs of
the model call on preprocessed inputs (model-only latency);
end-to-end latency per pair on real files (decode and preprocess both photos,
then infer at batch 1: what a clinic waits for), with the time split between
decode+preprocess and inference, on the split's own photos and on `--photos
DIR` (a clinic's own phone photos); mean / p50 / p90 / p99 latency and
throughput; peak resident memory while loading and running it; the bundle's
size; averaged AUC and ACC and every category's AUC on the chosen split; and
against the reference, on the same cases, the statistical gate of
`edgederm.scoring.gate` (paired bootstrap confidence intervals of the AUC
drop, decision flips). A variant that fails to load or run becomes a failed
row, not a crash.

A variant spec is `BUNDLE`, `BUNDLE@backend` (a jetson bundle's Q/DQ graph in
onnxruntime) and either with `+reduced` or `+full`: the bundle run with that JPEG
decode rule instead of its manifest's (`edgederm.preprocess.DECODES`), scored
on its own decode of the same cases, so the gate measures what reduced decoding
costs the same model.

With --rounds N the latency runs are repeated round-robin over the variants
(each round reloads each variant) and pooled: on a shared or thermally
throttled machine a slow spell then lands on every variant instead of
whichever one happened to be running.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from edgederm.benchmarks.host import Tegrastats, host_facts
from edgederm.data.inputs import IMAGE_INPUTS, METADATA_INPUT, load_arrays, random_metadata
from edgederm.data.release import read_release
from edgederm.errors import EdgeDermError
from edgederm.preprocess import DECODES, PreprocessConfig, header_size
from edgederm.runtime import load_bundle
from edgederm.runtime.bundle import read_manifest
from edgederm.scoring.calibration import calibration_report, stored_calibration
from edgederm.scoring.gate import GateSettings, judge
from edgederm.scoring.metrics import compute_metrics

# the patient end-to-end timing gives a metadata input: any valid values (encoding costs microseconds)
EXAMPLE_METADATA = {"sex": "female", "location": "back", "elevation": "flat"}

@dataclass(frozen=True)
class Variant:
    path: Path
    backend: str | None = None      # None: the bundle's own
    decode: str | None = None       # None: the manifest's decode rule

    @classmethod
    def parse(cls, spec: str) -> "Variant":
        """`PATH`, `PATH@backend` (e.g. a jetson bundle's Q/DQ graph in onnxruntime), each optionally
        with `+reduced` / `+full` (the JPEG decode rule to run it with)."""
        decode = None
        head, plus, tail = spec.rpartition("+")
        if plus and tail in DECODES:
            spec, decode = head, tail
        path, _, backend = spec.partition("@")
        return cls(Path(path), backend or None, decode)

    @property
    def name(self) -> str:
        return self.path.name + (f"@{self.backend}" if self.backend else "") + (f"+{self.decode}" if self.decode else "")


PhotoSet = tuple[str, list[tuple[Path, Path]]]     # (label, pairs of photo paths)


def photo_pairs(folder: Path) -> list[tuple[Path, Path]]:
    """Consecutive photos of a folder as (clinical, dermoscopy) pairs, sorted by name; an odd last one
    pairs with itself."""
    if not folder.is_dir():
        raise EdgeDermError(f"{folder}: not a folder of photos")
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not photos:
        raise EdgeDermError(f"{folder}: no .jpg, .jpeg or .png photos to time")
    if len(photos) % 2:
        photos.append(photos[-1])
    return list(zip(photos[0::2], photos[1::2]))


def photo_set(label: str, pairs: list[tuple[Path, Path]]) -> PhotoSet:
    """The set labelled with its first photo's size, e.g. "test split, 768 x 512"."""
    size = header_size(Path(pairs[0][0]).read_bytes())
    return (f"{label}, {size[0]} x {size[1]}" if size else label), pairs


def time_end_to_end(predictor, pairs: list[tuple[Path, Path]], runs: int, warmup: int = 1) -> dict:
    """Per case at batch 1: decode and preprocess the photos the bundle takes (of each (clinical, dermoscopy)
    pair: both, or the clinical one for a clinical-only bundle; a metadata input gets EXAMPLE_METADATA), then
    the model call; pairs cycled."""
    prepare_ms, infer_ms = [], []
    for i in range(warmup + runs):
        photos = {**dict(zip(IMAGE_INPUTS, pairs[i % len(pairs)])), METADATA_INPUT: EXAMPLE_METADATA}
        start = time.perf_counter()
        inputs = predictor.prepare_cases([tuple(photos[name] for name in predictor.input_names)])
        prepared = time.perf_counter()
        predictor.run(*inputs)
        done = time.perf_counter()
        if i >= warmup:
            prepare_ms.append((prepared - start) * 1000.0)
            infer_ms.append((done - prepared) * 1000.0)
    total = np.add(prepare_ms, infer_ms)
    return {"pairs": len(pairs), "runs": runs, "mean_ms": float(total.mean()),
            "p50_ms": float(np.percentile(total, 50)), "p90_ms": float(np.percentile(total, 90)),
            "p99_ms": float(np.percentile(total, 99)), "decode_preprocess_ms": float(np.mean(prepare_ms)),
            "inference_ms": float(np.mean(infer_ms)),
            "decode_preprocess_share": float(np.sum(prepare_ms) / total.sum())}


def _reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets VmHWM, the peak resident set."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_mib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def time_runs(run: Callable[[], object], warmup: int, runs: int) -> list[float]:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def latency_summary(times_ms: list[float], batch: int) -> dict:
    t = np.asarray(times_ms)
    return {"batch": batch, "runs": len(t), "mean_ms": float(t.mean()), "p50_ms": float(np.percentile(t, 50)),
            "p90_ms": float(np.percentile(t, 90)), "p99_ms": float(np.percentile(t, 99)),
            "throughput_per_s": float(batch * 1000.0 / t.mean()), "times_ms": [round(x, 4) for x in times_ms]}


def bench_variant(variant: Variant, device: str, batch_sizes: list[int], warmup: int, runs: int,
                  evaluation: tuple[tuple[np.ndarray, ...], np.ndarray] | None, seed: int = 0,
                  photo_sets: list[PhotoSet] = (), e2e_runs: int = 10) -> dict:
    row: dict = {"name": variant.name, "bundle": str(variant.path), "status": "ok"}
    try:
        _reset_peak_rss()
        baseline = _status_mib("VmRSS")     # evaluation arrays and earlier variants' runtimes
        start = time.perf_counter()
        predictor = load_bundle(variant.path, device=device, backend=variant.backend)
        row["load_s"] = time.perf_counter() - start
        if variant.decode:
            predictor.preprocess = replace(predictor.preprocess, decode=variant.decode)
        manifest = predictor.manifest
        row.update(backend=predictor.backend, target=manifest["target"], precision=predictor.precision,
                   float_precision=predictor.float_precision,     # what it ran its float operations in, read back
                   runs_as=predictor.runs_as,      # a TensorRT engine's settings: flags, FP32 pins, gated or not
                   engine_ungated=((manifest.get("engine") or {}).get("settings") or {}).get("gate") == "ungated"
                   and predictor.backend == "tensorrt",
                   size_mb=sum(f["bytes"] for f in manifest["files"].values()) / 1e6,
                   weights_sha256=manifest["source"]["sha256"],    # which trained model the bundle holds
                   tta=(manifest.get("tta") or {}).get("views"),   # views built into the graph, if any
                   quantization=manifest.get("quantization"),      # INT8: the chosen method, what stayed float
                   _calibration=stored_calibration(manifest))             # its temperatures and thresholds, if fitted
        rng = np.random.default_rng(seed)
        row["latency"] = []
        for batch in batch_sizes:
            predictor.check_batch(batch)
            if evaluation is not None and len(evaluation[1]) >= batch:
                inputs = tuple(x[:batch] for x in evaluation[0])
            else:
                inputs = tuple(random_metadata(rng, batch) if name == METADATA_INPUT
                               else rng.standard_normal((batch, *predictor.input_shapes[name]), dtype=np.float32)
                               for name in predictor.input_names)
            row["latency"].append(latency_summary(time_runs(lambda: predictor.run(*inputs), warmup, runs), batch))
        row["decode"] = predictor.preprocess.decode
        if photo_sets:
            row["end_to_end"] = [{"photos": label, **time_end_to_end(predictor, pairs, e2e_runs)}
                                 for label, pairs in photo_sets]
        if evaluation is not None:
            probabilities = predictor.run_batched(*evaluation[0])
            metrics = compute_metrics(probabilities, evaluation[1])
            row["accuracy"] = {k: metrics[k] for k in ("cases", "avg_auc", "avg_acc", "auc", "acc")}
            row["_probabilities"] = probabilities      # for the gate; not written to the report
        row["peak_rss_mib"] = _status_mib("VmHWM")
        if baseline is not None and row["peak_rss_mib"] is not None:
            row["peak_rss_added_mib"] = row["peak_rss_mib"] - baseline   # what this variant added
    except EdgeDermError as e:
        row.update(status="failed", error=str(e))
    except Exception as e:   # a backend's own failure (missing library, compile error): a failed row, not a crash
        row.update(status="failed", error=f"{type(e).__name__}: {e}".splitlines()[0])
    return row


def tta_latency_cost(rows: list[dict]) -> None:
    """A bundle with test-time views built in, against the bundle of the same weights, target and precision
    without them, where the report has one: what the views cost a clinic in waiting."""
    plain = {(r["weights_sha256"], r["target"], r["precision"], r["backend"]): r for r in rows
             if r["status"] == "ok" and not r.get("tta")}
    for row in rows:
        if row["status"] != "ok" or not row.get("tta"):
            continue
        own = plain.get((row["weights_sha256"], row["target"], row["precision"], row["backend"]))
        if own is not None:
            row["tta_latency_cost"] = {"views": len(row["tta"]), "versus": own["name"],
                                       "ratio": row["latency"][0]["mean_ms"] / own["latency"][0]["mean_ms"]}


def speedup_vs_own_torch(rows: list[dict]) -> None:
    """Each variant's speed-up against the PyTorch FP32 bundle of the same weights, where the run has one:
    with several models in one report (edge beside paper), each is compared with its own reference."""
    torch_rows = {r["weights_sha256"]: r for r in rows
                  if r["status"] == "ok" and r["target"] == "torch" and r["precision"] == "fp32"}
    for row in rows:
        own = torch_rows.get(row.get("weights_sha256")) if row["status"] == "ok" else None
        if own is not None:
            row["speedup_vs_own_torch_fp32"] = own["latency"][0]["mean_ms"] / row["latency"][0]["mean_ms"]


def _like(row: dict, other: dict) -> bool:
    """The same trained weights behind the same test-time views: what two rows must share for their decisions to
    be compared (a flip then comes from the precision alone)."""
    return (row.get("weights_sha256") == other.get("weights_sha256")
            and (row.get("tta") or None) == (other.get("tta") or None))


def own_reference(row: dict, ref: dict, rows: list[dict]) -> dict | None:
    """The row `row` is gated against: the bench's reference when it holds the same weights and views; else an FP32
    bundle of this bench that does (the same target first); None when there is none."""
    if _like(row, ref):
        return ref
    same = [r for r in rows if r is not row and r["status"] == "ok" and r["precision"] == "fp32"
            and "_probabilities" in r and _like(row, r)]
    same.sort(key=lambda r: r["target"] != row["target"])
    return same[0] if same else None


def _needed(row: dict) -> str:
    """'needs an FP32 bundle of weights 1a2b3c4d with TTA views identity, hflip in this bench': the reference a row
    that cannot be compared would need, in one line."""
    views = f"TTA views {', '.join(row['tta'])}" if row.get("tta") else "no TTA views"
    return (f"not comparable with the reference: it needs an FP32 bundle of the same weights "
            f"({row['weights_sha256'][:8]}) with {views} in this bench (export --precision fp32"
            f"{' --tta ...' if row.get('tta') else ''} of the same run)")


def apply_gate(rows: list[dict], reference: str | None, settings: GateSettings,
               labels: np.ndarray | None = None, case_ids: list[str] | None = None) -> None:
    """Speed-up against the reference, and the gate's verdict where accuracy was measured: each row against the
    FP32 bundle of its own weights and views (`own_reference`), never a silent mixed comparison."""
    speedup_vs_own_torch(rows)
    tta_latency_cost(rows)
    ref = next((r for r in rows if r["name"] == reference and r["status"] == "ok"), None)
    owns = {id(row): own_reference(row, ref, rows) for row in rows
            if ref is not None and row["status"] == "ok" and row is not ref}
    # an FP32 bundle other rows are gated against is their reference: its own views are no quantization error
    references = {id(own) for own in owns.values() if own is not None}
    for row in rows:
        if row["status"] != "ok":
            row["verdict"] = "fail"
            continue
        if ref is not None:
            row["speedup_vs_reference"] = ref["latency"][0]["mean_ms"] / row["latency"][0]["mean_ms"]
        own = owns.get(id(row))
        if row is ref or id(row) in references:
            row["verdict"] = "reference"
        elif ref is None or "_probabilities" not in row or "_probabilities" not in ref:
            row["verdict"] = "not gated"     # no reference or no --data: speed only
        elif own is None:
            row["verdict"], row["not_comparable"] = "not comparable", _needed(row)
        else:
            # decisions read as the reference reads them on the device (its fitted reading, if any)
            row["gate"] = judge(own["_probabilities"], row["_probabilities"], labels, case_ids, settings,
                                own.get("_calibration"))
            row["gated_against"] = own["name"]
            # an engine built --ungated from a graph the export's gate did not pass: measured, never approved
            row["verdict"] = "not gated" if row.get("engine_ungated") else row["gate"]["verdict"]
    for row in rows:
        # calibration and melanoma operating points of each variant, with the reference's fitted temperatures
        # and thresholds (the ones its bundle carries): what a clinic gets from this variant
        if ref is not None and ref.get("_calibration") and "_probabilities" in row:
            # a bundle with test-time views carries thresholds refitted on its own (TTA) outputs: the device reads
            # it with those, so its clinic figures do too
            fit = row["_calibration"] if row.get("tta") and row.get("_calibration") else ref["_calibration"]
            report = calibration_report(fit, row["_probabilities"], labels)
            row["calibration"] = {"ece_percent": {t: 100 * c["ece_calibrated"] for t, c in report["tasks"].items()},
                                  "melanoma": report["melanoma"], "operating_point": report["operating_point"],
                                  # the same reading on valid, where its threshold was chosen (None: a fit that predates the record)
                                  "valid_operating_point": fit.get("valid_operating_point")}
    for row in rows:
        row.pop("_probabilities", None)
        row.pop("_calibration", None)


def pool_round(row: dict, again: dict) -> None:
    """Add another round's timed runs to a variant's latency figures."""
    if again["status"] != "ok":
        row.update(status="failed", error=f"in a later round: {again['error']}")
        return
    row["latency"] = [latency_summary(first["times_ms"] + later["times_ms"], first["batch"])
                      for first, later in zip(row["latency"], again["latency"])]


def _inputs_of(variant: Variant) -> tuple[PreprocessConfig, tuple[str, ...]] | None:
    """A variant's preprocessing and input names, from its unverified manifest (verification happens when it
    loads)."""
    try:
        manifest = read_manifest(variant.path, verify=False)
        cfg = PreprocessConfig.from_dict(manifest["preprocess"])
        names = tuple(i["name"] for i in manifest["inputs"])
    except (EdgeDermError, KeyError):
        return None
    return (replace(cfg, decode=variant.decode) if variant.decode else cfg), names


def run_bench(bundles: list[str], reference: str | None, data: Path | None, split: str, batch_sizes: list[int],
              warmup: int, runs: int, gate: GateSettings, device: str = "CPU", progress=None,
              rounds: int = 1, photos: list[Path] = (), e2e_runs: int = 10) -> dict:
    variants = [Variant.parse(b) for b in bundles]
    if reference is not None and all(v.name != Variant.parse(reference).name for v in variants):
        variants.insert(0, Variant.parse(reference))
    if any(b < 1 for b in batch_sizes):
        raise EdgeDermError(f"batch sizes must be at least 1, got {batch_sizes}")
    if rounds < 1 or e2e_runs < 1:
        raise EdgeDermError(f"rounds and end-to-end runs must be at least 1, got {rounds} and {e2e_runs}")
    if gate.resamples < 100:
        raise EdgeDermError(f"the gate needs at least 100 bootstrap resamples, got {gate.resamples}")
    photo_sets = [photo_set(folder.name, photo_pairs(folder)) for folder in photos]
    # each variant's preprocessing and inputs (as JSON), read once from its manifest: groups the evaluation arrays
    keys = {v: (json.dumps({**found[0].to_dict(), "inputs": found[1]}, sort_keys=True)
                if (found := _inputs_of(v)) else None) for v in variants}
    evaluations: dict[str, tuple] = {}    # preprocessing and inputs (JSON) -> (the inputs' arrays, labels)
    case_ids = None
    if data is not None:
        release = read_release(data)
        cases = release.split(split)
        if not cases:
            raise EdgeDermError(f"{data}: the {split} split is empty")
        settings = set(keys.values()) - {None}
        if len({json.dumps({**json.loads(s), "decode": None, "inputs": None}) for s in settings}) > 1:
            raise EdgeDermError("the bundles preprocess differently (size, resize rule or normalisation); "
                                "bench them separately")
        labels = np.array([c.labels for c in cases])
        for setting in settings:
            found = json.loads(setting)
            names = tuple(found.pop("inputs"))
            evaluations[setting] = (load_arrays(cases, PreprocessConfig.from_dict(found), names), labels)
        case_ids = [c.case_id for c in cases]
        photo_sets.insert(0, photo_set(f"{split} split", [(c.clinical, c.derm) for c in cases[:20]]))

    def evaluation_of(variant: Variant):
        return evaluations.get(keys[variant]) if keys[variant] else None

    rows = []
    with Tegrastats() as tegrastats:
        for variant in (progress(variants) if progress else variants):
            rows.append(bench_variant(variant, device, batch_sizes, warmup, runs, evaluation_of(variant),
                                      photo_sets=photo_sets, e2e_runs=e2e_runs))
        for _ in range(rounds - 1):     # latency only: accuracy does not change between rounds
            for row, variant in zip(rows, variants):
                if row["status"] == "ok":
                    pool_round(row, bench_variant(variant, device, batch_sizes, warmup, runs, None))
    reference_name = Variant.parse(reference).name if reference else None
    labels = next(iter(evaluations.values()))[1] if evaluations else None
    apply_gate(rows, reference_name, gate, labels, case_ids)
    # "not comparable" is no verdict a device can act on: the report fails until the like reference is benched
    passing = [r for r in rows if r["verdict"] in ("pass", "reference", "not gated")]
    fastest = min(passing, key=lambda r: r["latency"][0]["mean_ms"])["name"] if passing else None
    return {"host": host_facts(), "jetson_telemetry": tegrastats.summary(), "device": device,
            "data": str(data) if data else None, "split": split if data else None, "batch_sizes": batch_sizes,
            "warmup": warmup, "runs": runs, "rounds": rounds, "e2e_runs": e2e_runs,
            "photo_sets": [label for label, _ in photo_sets], "reference": reference_name, "gate": gate.describe(),
            "variants": rows, "fastest_passing": fastest,
            "gate_passed": all(r["verdict"] in ("pass", "reference", "not gated") for r in rows)}
