"""`edgederm export`: a trained run -> one bundle per (target, precision).

Every format is built from the one ONNX export; each bundle is checked on the
evaluation split against the PyTorch FP32 reference and the figures go into
its manifest. Arguments are checked against export/formats.py before any
work starts; bundles are staged and renamed into place (edgederm/runtime/bundle.py).
"""
from __future__ import annotations

import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable

import numpy as np

from edgederm import labels as L
from edgederm.calibration.selection import CalibrationSet, build_calibration_set
from edgederm.data.inputs import IMAGE_INPUTS, METADATA_INPUT, input_shape, load_arrays, random_metadata
from edgederm.data.release import Release, read_release
from edgederm.data.render import render_case
from edgederm.data.synth import sample_labels
from edgederm.errors import ConfigError
from edgederm.evaluation.gate import DEFAULT_MAX_FLIP_RATE, GateSettings, agreement
from edgederm.evaluation.metrics import compute_metrics
from edgederm.export import int8_gate, jetson_check, openvino_export, tensorrt_export
from edgederm.export.engine import INT8_FP16_ONNX
from edgederm.export.formats import Target, parse_request
from edgederm.export.onnx_export import OPSET, export_onnx, onnxruntime_session, run_onnx, run_torch
from edgederm.models.heads import BranchNet
from edgederm.models.io import load_model, read_metadata, save_weights
from edgederm.preprocess import PreprocessConfig, preprocess_image
from edgederm.runtime.bundle import BundleError, sha256_file, staged_bundle, write_manifest

DEFAULT_INT8_MARGIN = 1.0       # AUC points: the same default as `edgederm bench`
PARITY_CASES = 32
PARITY_TOLERANCE = 1e-4
CONCURRENT_TARGETS = 2     # targets exported side by side (see export_many)


@dataclass
class ExportRequest:
    run: Path
    target: str
    precisions: str | None = None
    data: Path | None = None
    out: Path = Path("exports")
    max_auc_drop: float | None = None      # INT8 gate margin on valid, AUC points (None: DEFAULT_INT8_MARGIN)
    max_flip_rate: float | None = None     # INT8 decision limit on valid, percent (None: DEFAULT_MAX_FLIP_RATE)
    accuracy_control: bool = False         # OpenVINO INT8: NNCF accuracy control when no block set passes
    calibration_cases: int | None = None
    calibration_split: str = "train"
    eval_split: str | None = "test"       # None: no accuracy figures (e.g. random-init latency studies)
    seed: int = 0
    force: bool = False


@dataclass
class Context:
    """What every format function needs, computed once."""
    model: BranchNet
    preprocess: PreprocessConfig
    onnx_fp32: Path
    source: dict
    calib: CalibrationSet | None
    evaluation: tuple[tuple[np.ndarray, ...], np.ndarray] | None     # (the model's inputs, labels)
    valid: int8_gate.ValidSplit | None                                # for the INT8 gate
    reference: dict | None                                            # FP32 PyTorch metrics
    eval_split: str
    log: Callable[[str], None]
    workdir: Path                                                     # scratch space of this export pass
    accuracy_control: bool = False
    clinical: dict | None = None                                      # the weights' fitted temperatures, thresholds


def _versions() -> dict:
    out = {}
    for package in ("edgederm", "torch", "timm", "onnx", "onnxruntime", "openvino", "nncf"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            pass
    return out


def _labels_schema() -> dict:
    return {"tasks": [{"key": t.key, "title": t.title, "classes": list(t.classes)} for t in L.TASKS],
            "output_layout": "one output per task, named by key, softmax probabilities in class order",
            "auc_categories": [L.category_name(*c) for c in L.AUC_CATEGORIES],
            "seven_point": {"criteria": [{"task": t, "class": c, "points": p} for t, c, p in L.SEVEN_POINT_CRITERIA],
                            "threshold": L.SEVEN_POINT_THRESHOLD}}


def _base_manifest(ctx: Context, target: Target, precision: str, graphs: list[str]) -> dict:
    size = ctx.preprocess.size
    weights = ctx.model.branch_weights.tolist()
    return {
        "target": target.name, "backend": target.backend, "precision": precision, "graphs": graphs,
        "inputs": [{"name": n, "shape": ["batch", *input_shape(n, size)], "dtype": "float32"} for n in ctx.model.input_names],
        "outputs": [{"name": t.key, "shape": ["batch", t.num_classes], "dtype": "float32"} for t in L.TASKS],
        "preprocess": ctx.preprocess.to_dict(),
        "labels": _labels_schema(),
        "branch_weights": dict(zip(ctx.model.branches, weights)),
        "model_config": ctx.model.cfg.to_dict(),
        "source": ctx.source,
        # temperatures and melanoma operating points fitted on valid at training (edgederm.evaluation.clinical);
        # None for weights trained before they existed: the device then reads the plain checklist
        "clinical": ctx.clinical,
        "opset": OPSET,
        "versions": _versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _score(ctx: Context, name: str, predict: Callable[..., np.ndarray]) -> dict | None:
    """Metrics of one variant (`predict(*inputs)`) on the evaluation split, with the drop from the FP32 reference."""
    if ctx.evaluation is None:
        return None
    inputs, labels = ctx.evaluation
    m = compute_metrics(predict(*inputs), labels)
    drop = 100 * (ctx.reference["avg_auc"] - m["avg_auc"])
    ctx.log(f"{name}: {ctx.eval_split} averaged AUC {100 * m['avg_auc']:.2f} "
            f"({-drop:+.2f} points vs PyTorch FP32 {100 * ctx.reference['avg_auc']:.2f})")
    return {"split": ctx.eval_split, "cases": m["cases"], "avg_auc": m["avg_auc"], "avg_acc": m["avg_acc"],
            "auc": m["auc"], "reference": "PyTorch FP32", "reference_avg_auc": ctx.reference["avg_auc"],
            "auc_drop_points": drop}


# --- one function per format, each filling a staged bundle directory ---------

def torch_bundle(ctx: Context, target: Target, precision: str, directory: Path) -> None:
    save_weights(ctx.model, directory / "model.safetensors")
    manifest = _base_manifest(ctx, target, precision, ["model.safetensors"])
    manifest["metrics"] = _score(ctx, "torch fp32", lambda *x: run_torch(ctx.model, *x))
    write_manifest(directory, manifest)


def onnx_bundle(ctx: Context, target: Target, precision: str, directory: Path) -> None:
    (directory / "model.onnx").write_bytes(ctx.onnx_fp32.read_bytes())
    session = onnxruntime_session(directory / "model.onnx")
    manifest = _base_manifest(ctx, target, precision, ["model.onnx"])
    manifest["metrics"] = _score(ctx, "onnx fp32", lambda *x: run_onnx(session, *x))
    write_manifest(directory, manifest)


def openvino_bundle(ctx: Context, target: Target, precision: str, directory: Path) -> None:
    model = openvino_export.convert(ctx.onnx_fp32)
    manifest = _base_manifest(ctx, target, precision, ["model.xml", "model.bin"])
    if precision == "int8":
        transformer = openvino_export.has_attention(ctx.model)
        valid = ctx.valid
        ctx.log(f"openvino int8: NNCF on {len(ctx.calib)} calibration cases, gated on the valid split "
                f"({len(valid.labels)} cases)")

        def predictor(int8):
            compiled = openvino_export.compile_cpu(int8, "int8")
            return lambda *x: openvino_export.run_openvino(compiled, *x)

        def accuracy_control():
            limit = valid.settings.max_flip_rate
            return openvino_export.quantize_for_agreement(
                model.clone(), ctx.calib, transformer, valid.inputs,
                lambda probs, cases: agreement(valid.reference[cases], probs, valid.clinical_fit), (limit or 100.0) / 100)

        plain = openvino_export.quantize_int8(model.clone(), ctx.calib, transformer)
        int8, attempts, ranking = int8_gate.search_openvino(
            model, plain, lambda m, blocks: openvino_export.keep_in_float(m, model, blocks), predictor,
            accuracy_control if ctx.accuracy_control else None, valid, ctx.log)
        if int8 is None:
            raise int8_gate.refuse(attempts, valid, "openvino")
        model = openvino_export.finalize(int8)
        manifest["calibration"] = ctx.calib.describe()
        manifest["quantization"] = {"tool": "nncf", "model_type": "transformer" if transformer else "default",
                                    "method": attempts[-1].method, "kept_in_float": attempts[-1].kept_in_float}
        manifest["int8_gate"] = int8_gate.record(attempts, valid, ranking)
    openvino_export.save_ir(model, directory / "model.xml", fp16=precision == "fp16")
    compiled = openvino_export.compile_cpu(directory / "model.xml", precision)
    manifest["metrics"] = _score(ctx, f"openvino {precision}",
                                 lambda *x: openvino_export.run_openvino(compiled, *x))
    write_manifest(directory, manifest)


def jetson_bundle(ctx: Context, target: Target, precision: str, directory: Path) -> None:
    graphs = ["model.fp16.onnx"]
    tensorrt_export.convert_fp16(ctx.onnx_fp32, directory / "model.fp16.onnx")
    manifest = _base_manifest(ctx, target, precision, graphs)
    if precision == "int8":
        valid = ctx.valid
        ctx.log(f"jetson int8: symmetric Q/DQ on {len(ctx.calib)} calibration cases, gated on the valid split "
                f"({len(valid.labels)} cases)")
        out = directory / "model.int8.onnx"

        def predictor(graph: Path):
            session = onnxruntime_session(graph)
            return lambda *x: run_onnx(session, *x)

        quantizer = tensorrt_export.QdqQuantizer(ctx.onnx_fp32, ctx.calib, ctx.workdir / "qdq")
        graph, attempts, ranking = int8_gate.search_jetson(quantizer, out, predictor, valid, ctx.log)
        if graph is None:
            raise int8_gate.refuse(attempts, valid, "jetson")
        graphs.insert(0, "model.int8.onnx")
        manifest["calibration"] = ctx.calib.describe()
        manifest["quantization"] = {"tool": tensorrt_export.QDQ_QUANTIZER, "ops": tensorrt_export.QUANTIZED_OPS,
                                    "method": attempts[-1].method, "kept_in_float": attempts[-1].kept_in_float}
        manifest["int8_gate"] = int8_gate.record(attempts, valid, ranking)
        # What TensorRT 11 builds (engine.py): the same Q/DQ typed FP16 outside it. FP16 rounding moves some
        # values across a quantization step, so it is gated like any INT8 graph, and left out when it fails.
        typed = tensorrt_export.convert_int8_fp16(graph, directory / INT8_FP16_ONNX)
        attempt = int8_gate.judge_on_valid(valid, int8_gate.Attempt("FP16-typed INT8 graph, for TensorRT 11"),
                                           valid.predictions(predictor(typed)), ctx.log)
        if attempt.passed:
            graphs.append(typed.name)
        else:
            typed.unlink()
        manifest["int8_fp16"] = {"graph": typed.name if attempt.passed else None, "for": "TensorRT 11 (strongly typed)",
                                 "valid": attempt.describe()}
    # What TensorRT 10.3 needs, checked statically (no TensorRT here): a graph that fails it is a bug in
    # this exporter, and a Jetson would find it only after copying and building; nothing is written.
    for graph in graphs:
        found = jetson_check.check_graph(directory / graph)
        if found:
            version = "11" if graph == INT8_FP16_ONNX else "10.3"
            raise jetson_check.GraphFormError(f"jetson {precision}: {graph}: {len(found)} problem(s) for TensorRT "
                                              f"{version}, first: {found[0]}; no bundle written")
    manifest["tensorrt_check"] = {"rules": "TensorRT 10.3 (export/jetson_check.py)", "passed": graphs}
    scored = directory / graphs[0]
    session = onnxruntime_session(scored)
    manifest["metrics"] = _score(ctx, f"jetson {precision} ({scored.name} in onnxruntime, CPU)",
                                 lambda *x: run_onnx(session, *x))
    manifest["engine"] = None
    (directory / "README.md").write_text(_jetson_readme(manifest, directory.name))
    write_manifest(directory, manifest)


FORMAT_FUNCTIONS = {"torch": torch_bundle, "onnx": onnx_bundle, "openvino": openvino_bundle, "jetson": jetson_bundle}


def _jetson_readme(manifest: dict, name: str) -> str:
    size = manifest["preprocess"]["size"]
    graph = manifest["graphs"][0]
    # trtexec's shape lists, batch left as {0} for str.format: "clinical:{0}x3x224x224,..."
    shapes = ",".join(f"{i['name']}:{{0}}x" + "x".join(str(d) for d in i["shape"][1:]) for i in manifest["inputs"])
    photos = [i["name"] for i in manifest["inputs"] if i["name"] != METADATA_INPUT]
    inputs = " and ".join(f"`{name}`" for name in photos)
    metadata = (f" `{METADATA_INPUT}`: float32 N x {L.METADATA_SIZE}, one-hot, in this order: "
                + "; ".join(f"{field} ({', '.join(values)})" for field, values in L.METADATA_FIELDS.items()) + "."
                if any(i["name"] == METADATA_INPUT for i in manifest["inputs"]) else "")
    flags = "--int8 --fp16" if manifest["precision"] == "int8" else "--fp16"
    typed = ("; build from `model.int8.fp16.onnx` there (the INT8 graph typed FP16 outside Q/DQ)"
             if INT8_FP16_ONNX in manifest["graphs"] else "")
    return f"""# {name}: EdgeDerm bundle for NVIDIA Jetson (TensorRT)

Graphs: {', '.join(manifest['graphs'])}. The engine is built on the Jetson itself:
engines are tied to the GPU and the TensorRT version that built them.

## With EdgeDerm (recommended)

    edgederm engine build --bundle {name} [--workspace-mb 1024]

It checks the files against `manifest.json`, builds `model.engine` from `{graph}`,
keeps `timing.cache` for the next build, records the TensorRT version, GPU and
JetPack release in the manifest, and prints the trtexec line below.

## By hand

1. Check the files: `sha256sum {graph}` must equal its `sha256` in manifest.json.
2. Build (JetPack 6.1 / 6.2: TensorRT 10.3; JetPack 6.0: TensorRT 8.6; trtexec is in
   /usr/src/tensorrt/bin on a Jetson):

       /usr/src/tensorrt/bin/trtexec --onnx={graph} --saveEngine=model.engine \\
         --timingCacheFile=timing.cache --memPoolSize=workspace:1024M {flags} \\
         --minShapes={shapes.format(1, 1)} --optShapes={shapes.format(1, 1)} \\
         --maxShapes={shapes.format(8, 8)}

   On TensorRT 8.6 use `--workspace=1024` instead of `--memPoolSize`. On TensorRT 11
   drop `{flags}`: networks are strongly typed and take their precision from the graph{typed}.
   `edgederm engine build` also adds a second optimisation profile tuned for batch 8.
3. Inputs: {inputs}, float32 N x 3 x {size} x {size}, RGB, resized to
   {size} x {size} ({manifest['preprocess']['resize']}), scaled to [0, 1], normalised with mean
   {list(manifest['preprocess']['mean'])} and std {list(manifest['preprocess']['std'])}.
   Outputs: one per task ({', '.join(L.TASK_KEYS)}), probabilities in the class order of
   manifest.json `labels`.{metadata}
"""


def _check_destinations(req: ExportRequest, target: Target, precisions: list[str]) -> dict[str, Path]:
    destinations = {p: req.out / f"{req.run.name}-{target.name}-{p}" for p in precisions}
    if not req.force:
        for path in destinations.values():
            if path.exists():
                raise BundleError(f"{path}: already exists (use --force to replace it)")
    return destinations


def _arrays(release: Release, split: str, preprocess: PreprocessConfig, names: tuple[str, ...]):
    cases = release.split(split)
    if not cases:
        raise ConfigError(f"{release.root}: the {split} split is empty")
    return load_arrays(cases, preprocess, names), np.array([c.labels for c in cases])


def synthetic_inputs(preprocess: PreprocessConfig, count: int, seed: int,
                     names: tuple[str, ...] = IMAGE_INPUTS) -> tuple[np.ndarray, ...]:
    """`count` freshly drawn synthetic cases, preprocessed, one array per input in `names`: parity inputs
    that need no --data."""
    rng = np.random.default_rng(seed)
    pairs = [render_case(*sample_labels(rng), np.random.default_rng([seed, i])) for i in range(count)]
    return tuple(random_metadata(rng, count) if name == METADATA_INPUT
                 else np.stack([preprocess_image(pair[IMAGE_INPUTS.index(name)], preprocess) for pair in pairs])
                 for name in names)


def longest_first(plans: list[tuple]) -> list[tuple[int, tuple]]:
    """(index, plan), the plans holding an INT8 search first, otherwise in the order asked. The pool runs
    CONCURRENT_TARGETS at a time in submission order, and a search started late ends the pass late: in the
    quickstart, the torch and ONNX bundles queued ahead of the OpenVINO INT8 search delayed it by seconds."""
    return sorted(enumerate(plans), key=lambda item: "int8" not in item[1][2])


def export(req: ExportRequest, log: Callable[[str], None] = print) -> list[Path]:
    """One target's bundles (`edgederm export`)."""
    return export_many([req], log)


_SHARED = ("run", "data", "calibration_cases", "calibration_split", "eval_split", "seed")


def export_many(requests: list[ExportRequest], log: Callable[[str], None] = print,
                on_refused: Callable[[int8_gate.NoPassingInt8], None] | None = None) -> list[Path]:
    """Several targets of one run in one pass: the model, the ONNX graph and its parity check, the
    calibration set and the valid and test arrays are made once (the quickstart exports four targets).

    Every argument is checked before any work. A refused INT8 bundle (no graph passes the gate on valid)
    raises, unless `on_refused` takes it: then the other bundles are still written."""
    first = requests[0]
    mixed = [k for k in _SHARED for r in requests if getattr(r, k) != getattr(first, k)]
    if mixed:
        raise ConfigError(f"exports of one pass must share {', '.join(sorted(set(mixed)))}")
    plans = []
    for req in requests:
        target, precisions = parse_request(req.target, req.precisions)
        calibrated = [p for p in precisions if p in target.calibrated]
        if calibrated and req.data is None:
            raise ConfigError(f"--data is required: {target.name} {', '.join(calibrated)} needs calibration cases")
        if (req.max_auc_drop is not None or req.max_flip_rate is not None or req.accuracy_control) \
                and "int8" not in precisions:
            raise ConfigError("--max-auc-drop, --max-flip-rate and --accuracy-control are the INT8 gate's: "
                              "they apply to --precision int8 only")
        if req.max_flip_rate is not None:
            GateSettings(max_flip_rate=req.max_flip_rate)          # its range is checked before any work
        plans.append((req, target, _check_destinations(req, target, precisions)))
    weights = first.run / "model.safetensors"
    if not weights.is_file():
        raise ConfigError(f"{weights}: not found (has training finished? export needs a finished run)")

    model = load_model(weights).eval()
    preprocess = model.cfg.preprocess()
    release = read_release(first.data) if first.data else None
    calib = None
    if any(p in target.calibrated for _, target, destinations in plans for p in destinations):
        calib = build_calibration_set(release, preprocess, first.calibration_split, first.calibration_cases,
                                      first.seed, model.input_names)
        log(f"calibration: {len(calib)} cases of the {first.calibration_split} split, stratified by diagnosis")
    evaluation = (_arrays(release, first.eval_split, preprocess, model.input_names)
                  if release and first.eval_split else None)
    reference = compute_metrics(run_torch(model, *evaluation[0]), evaluation[1]) if evaluation else None
    meta = read_metadata(weights)
    valid = None
    if any("int8" in destinations for _, _, destinations in plans):
        cases = release.split("valid")
        if not cases:
            raise ConfigError(f"{release.root}: the valid split is empty: the INT8 gate needs it")
        inputs = load_arrays(cases, preprocess, model.input_names)
        valid = int8_gate.ValidSplit(inputs, np.array([c.labels for c in cases]),
                                     [c.case_id for c in cases], run_torch(model, *inputs),
                                     GateSettings(max_auc_drop=DEFAULT_INT8_MARGIN, seed=first.seed),
                                     meta.get("clinical"))
    source = {"run": str(first.run), "weights": str(weights), "sha256": sha256_file(weights),
              "weights_of": meta.get("source"),
              # where each encoder's training started: traces a deployed model to its ImageNet source
              "initial_weights": meta.get("initial_weights"), "reference_metrics": None if reference is None else {
                  "split": first.eval_split, "avg_auc": reference["avg_auc"], "avg_acc": reference["avg_acc"]}}

    def bundles_of(req: ExportRequest, target: Target, destinations: dict[str, Path], workdir: Path) -> list[Path]:
        margin = DEFAULT_INT8_MARGIN if req.max_auc_drop is None else req.max_auc_drop
        flips = DEFAULT_MAX_FLIP_RATE if req.max_flip_rate is None else req.max_flip_rate
        settings = None if valid is None else replace(valid.settings, max_auc_drop=margin, max_flip_rate=flips)
        ctx = Context(model, preprocess, onnx_fp32, source, calib, evaluation,
                      None if valid is None else replace(valid, settings=settings),
                      reference, first.eval_split, log, workdir, req.accuracy_control, meta.get("clinical"))
        ctx.workdir.mkdir()
        done = []
        # INT8 first: it is this target's long job (the search), and what it does not need, the target's
        # other bundles, can wait for it without lengthening the pass (see `longest_first`).
        for precision, destination in sorted(destinations.items(), key=lambda item: item[0] != "int8"):
            try:
                with staged_bundle(destination, force=req.force) as directory:
                    FORMAT_FUNCTIONS[target.name](ctx, target, precision, directory)
            except int8_gate.NoPassingInt8 as refusal:
                if on_refused is None:
                    raise
                on_refused(refusal)
                continue
            log(f"wrote {destination}")
            done.append(destination)
        return done

    with tempfile.TemporaryDirectory(prefix="edgederm-export-") as tmp:
        onnx_fp32 = export_onnx(model, Path(tmp) / "model.onnx")
        # Real cases when the release is at hand (already preprocessed); freshly drawn synthetic ones otherwise.
        if evaluation is not None or valid is not None:
            arrays, parity_source = ((evaluation[0], f"{first.eval_split} cases") if evaluation is not None
                                     else (valid.inputs, "valid cases"))
            parity = tuple(a[:PARITY_CASES] for a in arrays)
        else:
            parity = synthetic_inputs(preprocess, PARITY_CASES, first.seed, model.input_names)
            parity_source = "synthetic cases"
        diff = float(np.abs(run_onnx(onnxruntime_session(onnx_fp32), *parity) - run_torch(model, *parity)).max())
        log(f"ONNX parity with PyTorch on {len(parity[0])} {parity_source}: max |probability difference| "
            f"{diff:.2e}")
        if diff > PARITY_TOLERANCE:
            raise ConfigError(f"{first.run}: ONNX export differs from PyTorch by {diff:.2e} (> {PARITY_TOLERANCE})")
        source["onnx_parity_max_abs_diff"] = diff
        # Targets run side by side. An INT8 search spends much of its time single-threaded (OpenVINO
        # compiles, onnxruntime's quantize_static rewriting the graph, NNCF's bias correction), so on
        # a 2-core CPU the OpenVINO and Jetson searches together take little longer than the slower one.
        # Each target works in its own scratch folder and stages its own bundles; results are the same
        # as one after the other (each inference is single-stream; nothing is shared but read-only inputs).
        pool = ThreadPoolExecutor(max_workers=CONCURRENT_TARGETS, thread_name_prefix="export")
        try:
            jobs = {i: pool.submit(bundles_of, req, target, destinations, Path(tmp) / f"{i}-{target.name}")
                    for i, (req, target, destinations) in longest_first(plans)}
            written = [path for i in sorted(jobs) for path in jobs[i].result()]     # in the order asked
        finally:
            # On an error or Ctrl-C, targets not yet started never start; a running one finishes its
            # staged bundle (threads cannot be stopped), so nothing is left half-written either way.
            pool.shutdown(wait=True, cancel_futures=True)
    return written
