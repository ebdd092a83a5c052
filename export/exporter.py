"""`edgederm export`: a trained run -> one bundle per (target, precision).

Every format is built from the one ONNX export; each bundle is checked on the
evaluation split against the PyTorch FP32 reference and the figures go into
its manifest. Arguments are checked against export/formats.py before any
work starts; bundles are staged and renamed into place (edgederm/runtime/bundle.py).

The ONNX, OpenVINO and Jetson bundles (export/bundles.py) are built in worker
processes (export/isolation.py), as is the ONNX parity check: a crash inside
OpenVINO, onnxruntime or NNCF becomes a one-line error for that bundle, the
others are still written, and the command exits 1 at the end.
"""
from __future__ import annotations

import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from edgederm import labels as L
from edgederm.calibration.selection import CalibrationSet, build_calibration_set
from edgederm.data.inputs import IMAGE_INPUTS, METADATA_INPUT, input_shape, load_arrays, random_metadata
from edgederm.data.release import Release, read_release
from edgederm.data.render import render_case
from edgederm.data.synth import sample_labels
from edgederm.errors import ConfigError
from edgederm.scoring.calibration import (CALIBRATION_KEY, DEFAULT_TARGET_SENSITIVITY, fit_calibration,
                                          stored_calibration)
from edgederm.scoring.gate import DEFAULT_MAX_FLIP_RATE, GateSettings
from edgederm.scoring.metrics import compute_metrics
from edgederm.export import bundles, int8_gate, openvino_export, qat
from edgederm.export.bundles import BundleContext, new_manifest, score
from edgederm.export.formats import Target, parse_request
from edgederm.export.isolation import NativeCrash, run_isolated, start_workers
from edgederm.export.onnx_export import OPSET, export_onnx, run_torch
from edgederm.export.onnxruntime_scoring import onnx_probabilities
from edgederm.models.heads import BranchNet
from edgederm.models.io import load_model, read_metadata, save_weights
from edgederm.models.tta import EXPORT_VIEW_SETS, NO_TTA, VIEW_SETS, views_of
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
    qat: bool = True                       # INT8: quantization-aware fine-tuning when plain PTQ fails
    qat_epochs: int | None = None          # None: QatSettings' default
    qat_minutes: float | None = None       # QAT's time budget; None: every epoch
    int8_method: str = "search"            # INT8: the search, or one attempt on purpose (int8_gate.INT8_METHODS)
    calibration_cases: int | None = None
    calibration_split: str = "train"
    eval_split: str | None = "test"       # None: no accuracy figures (e.g. random-init latency studies)
    tta: str | None = None                 # views built into the graph (edgederm.models.tta.EXPORT_VIEW_SETS)
    seed: int = 0
    force: bool = False


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


def _shared_manifest(model: BranchNet, preprocess: PreprocessConfig, source: dict, calibration: dict | None) -> dict:
    """The manifest fields every bundle of one run shares (export/bundles.py adds the format's own)."""
    size = preprocess.size
    return {
        "inputs": [{"name": n, "shape": ["batch", *input_shape(n, size)], "dtype": "float32"}
                   for n in model.input_names],
        "outputs": [{"name": t.key, "shape": ["batch", t.num_classes], "dtype": "float32"} for t in L.TASKS],
        "preprocess": preprocess.to_dict(),
        "labels": _labels_schema(),
        "branch_weights": dict(zip(model.branches, model.branch_weights.tolist())),
        "model_config": model.cfg.to_dict(),
        "source": source,
        # temperatures and melanoma operating points fitted on valid at training (edgederm.scoring.calibration);
        # None for weights trained before they existed: the device then reads the plain checklist
        CALIBRATION_KEY: calibration,
        "opset": OPSET,
        "versions": _versions(),
    }


def torch_bundle(ctx: BundleContext, model: BranchNet, target: Target, precision: str, directory: Path,
                 log: Callable[[str], None]) -> None:
    """In this process: it needs the network itself, and runs no native code but torch's."""
    save_weights(model, directory / "model.safetensors")
    manifest = new_manifest(ctx, target, precision, ["model.safetensors"])
    manifest["metrics"] = score(ctx, "torch fp32", lambda *x: run_torch(model, *x), log)
    write_manifest(directory, manifest)


# Built in a worker process each (export/isolation.py); tests may swap an entry for one that crashes.
FORMAT_FUNCTIONS = {"onnx": bundles.onnx_bundle, "openvino": bundles.openvino_bundle, "jetson": bundles.jetson_bundle}


def build_bundle(ctx: BundleContext, model: BranchNet, target: Target, precision: str, directory: Path,
                 log: Callable[[str], None]) -> None:
    """Fill the staged `directory` with one bundle; a worker's crash raises NativeCrash."""
    if target.name == "torch":
        torch_bundle(ctx, model, target, precision, directory, log)
    else:
        run_isolated(FORMAT_FUNCTIONS[target.name], ctx, target, precision, directory,
                     what=f"{target.name} {precision} bundle", log=log)


def _check_tta(req: ExportRequest, target: Target) -> None:
    """--tta builds views into a graph, and its thresholds are refitted on valid: refused, before any work,
    where neither can happen."""
    views_of(req.tta, EXPORT_VIEW_SETS)
    if target.name == "torch":
        raise ConfigError("--tta builds the views into an exported graph; a torch bundle holds weights, not a "
                          "graph (use --target onnx, openvino or jetson)")
    if req.data is None:
        raise ConfigError("--tta needs --data: the bundle's temperatures and melanoma thresholds are refitted on "
                          "the valid split's TTA outputs")


def _check_destinations(req: ExportRequest, target: Target, precisions: list[str]) -> dict[str, Path]:
    tta = "" if req.tta is None else f"-tta-{req.tta}"        # beside the plain bundles, never over them
    destinations = {p: req.out / f"{req.run.name}-{target.name}-{p}{tta}" for p in precisions}
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


_SHARED = ("run", "data", "calibration_cases", "calibration_split", "eval_split", "seed", "qat", "qat_epochs",
           "qat_minutes", "tta")


class ExportPlan(NamedTuple):
    """One request, checked: its target and the bundle folder each precision is staged into."""
    req: ExportRequest
    target: Target
    destinations: dict[str, Path]


def gates_fp16(target: Target, data: Path | None) -> bool:
    """Whether the valid split judges the target's FP16 graphs: a Jetson's, whenever the release is given (TensorRT
    runs them as typed, and FP16 rounding can cost decisions: export/fp16_typing.py)."""
    return target.name == "jetson" and data is not None


def qat_settings_of(req: ExportRequest) -> qat.QatSettings:
    """QAT's settings: the defaults, with the request's epochs and time budget."""
    given = {"epochs": req.qat_epochs, "minutes": req.qat_minutes}
    return qat.QatSettings(seed=req.seed, **{k: v for k, v in given.items() if v is not None})


def plan_request(req: ExportRequest) -> ExportPlan:
    """Every check of one request that needs no model: made for all requests before any work."""
    target, precisions = parse_request(req.target, req.precisions)
    calibrated = [p for p in precisions if p in target.calibrated]
    if calibrated and req.data is None:
        raise ConfigError(f"--data is required: {target.name} {', '.join(calibrated)} needs calibration cases")
    if ((req.max_auc_drop is not None or req.max_flip_rate is not None)
            and "int8" not in precisions and not gates_fp16(target, req.data)):
        raise ConfigError("--max-auc-drop and --max-flip-rate are the gate's: they apply to --precision int8, and to "
                          "a jetson fp16 graph judged on --data")
    if (req.accuracy_control or req.qat_epochs is not None or req.qat_minutes is not None
            or req.int8_method != "search") and "int8" not in precisions:
        raise ConfigError("--accuracy-control, --qat-epochs, --qat-minutes and --int8-method are the INT8 search's: "
                          "they apply to --precision int8 only")
    if req.qat_epochs is not None or req.qat_minutes is not None:
        qat_settings_of(req)          # their ranges are checked before any work
    int8_gate.check_method(req.int8_method, req.qat)
    if req.accuracy_control and req.int8_method != "search":
        raise ConfigError(f"--accuracy-control is the search's last attempt; --int8-method {req.int8_method} makes "
                          "one attempt only: drop one of them")
    if req.max_flip_rate is not None:
        GateSettings(max_flip_rate=req.max_flip_rate)          # its range is checked before any work
    if req.tta is not None:
        _check_tta(req, target)
    return ExportPlan(req, target, _check_destinations(req, target, precisions))


def plan_pass(requests: list[ExportRequest]) -> list[ExportPlan]:
    """The requests of one pass checked: they share the run and its data (_SHARED), each is valid, and the
    run has finished."""
    first = requests[0]
    mixed = [k for k in _SHARED for r in requests if getattr(r, k) != getattr(first, k)]
    if mixed:
        raise ConfigError(f"exports of one pass must share {', '.join(sorted(set(mixed)))}")
    plans = [plan_request(req) for req in requests]
    weights = first.run / "model.safetensors"
    if not weights.is_file():
        raise ConfigError(f"{weights}: not found (has training finished? export needs a finished run)")
    return plans


def valid_split(release: Release, model: BranchNet, preprocess: PreprocessConfig, views: tuple[str, ...],
                seed: int, calibration: dict | None, tta: str | None):
    """(the valid split for the INT8 gate, the calibration bundles carry): with --tta, the temperatures
    and thresholds are refitted on the valid split's TTA outputs."""
    cases = release.split("valid")
    if not cases:
        raise ConfigError(f"{release.root}: the valid split is empty: the INT8 gate and --tta's thresholds "
                          "need it")
    inputs = load_arrays(cases, preprocess, model.input_names)
    valid = int8_gate.ValidSplit(inputs, np.array([c.labels for c in cases]),
                                 [c.case_id for c in cases], run_torch(model, *inputs, views=views),
                                 GateSettings(max_auc_drop=DEFAULT_INT8_MARGIN, seed=seed), calibration)
    if tta:
        # The views move P_FI: the thresholds the device reads it with are chosen again on what it will read
        # (the valid split's TTA outputs), at the sensitivity training chose them for.
        target_sensitivity = (calibration or {}).get("target_sensitivity", DEFAULT_TARGET_SENSITIVITY)
        calibration = {**fit_calibration(valid.reference, valid.labels, target_sensitivity),
                       "fitted_with_tta": list(views)}
        valid = replace(valid, calibration=calibration)
    return valid, calibration


@dataclass
class ExportSession:
    """One export pass over a finished run (`export_many`): what its targets share is made once, here: the
    model, the calibration set, the evaluation and valid arrays, the FP32 reference, the ONNX graph and its
    parity check; then `export_target` writes one target's bundles. Built by `ExportSession.open`."""
    first: ExportRequest                    # holds the fields every request of the pass shares (_SHARED)
    plans: list[ExportPlan]
    weights: Path
    views: tuple[str, ...]                  # test-time views built into the graphs (NO_TTA: none)
    qat_settings: qat.QatSettings | None    # None: no INT8 in the pass, or QAT turned off
    model: BranchNet
    preprocess: PreprocessConfig
    calib: CalibrationSet | None
    evaluation: tuple[tuple[np.ndarray, ...], np.ndarray] | None
    reference: dict | None                  # FP32 PyTorch metrics on the evaluation split
    calibration: dict | None                # temperatures and thresholds bundles carry (refitted with --tta)
    valid: int8_gate.ValidSplit | None
    source: dict                            # the manifest's "source": the run, its weights, the parity
    log: Callable[[str], None] = print
    on_refused: Callable[[int8_gate.NoPassingInt8], None] | None = None
    workdir: Path | None = None             # the pass's scratch folder, while `run` is running
    onnx_fp32: Path | None = None           # set by `export_graph`
    manifest: dict | None = None            # the fields every bundle shares, set by `export_graph`
    crashes: list[NativeCrash] = field(default_factory=list)

    @classmethod
    def open(cls, requests: list[ExportRequest], log: Callable[[str], None] = print,
             on_refused: Callable[[int8_gate.NoPassingInt8], None] | None = None) -> ExportSession:
        """Check every request, then load the model and make the arrays the pass's targets share."""
        plans = plan_pass(requests)
        first = requests[0]
        weights = first.run / "model.safetensors"
        wants_int8 = any("int8" in plan.destinations for plan in plans)
        qat_settings = None
        if wants_int8 and first.qat:
            qat_settings = qat_settings_of(first)
            qat.check_can_train(first.run, first.data)

        views = NO_TTA if first.tta is None else VIEW_SETS[first.tta]
        start_workers()         # their imports run while this process prepares the model and the splits
        model = load_model(weights).eval()
        preprocess = model.cfg.preprocess()
        release = read_release(first.data) if first.data else None
        calib = None
        if any(p in plan.target.calibrated for plan in plans for p in plan.destinations):
            calib = build_calibration_set(release, preprocess, first.calibration_split, first.calibration_cases,
                                          first.seed, model.input_names)
            log(f"calibration: {len(calib)} cases of the {first.calibration_split} split, stratified by diagnosis")
        evaluation = (_arrays(release, first.eval_split, preprocess, model.input_names)
                      if release and first.eval_split else None)
        reference = (compute_metrics(run_torch(model, *evaluation[0], views=views), evaluation[1])
                     if evaluation else None)
        meta = read_metadata(weights)
        calibration = stored_calibration(meta)
        valid = None
        # the valid split judges INT8, refits --tta's thresholds, and gates a Jetson's FP16 graphs
        if wants_int8 or first.tta or any(gates_fp16(plan.target, first.data) for plan in plans):
            valid, calibration = valid_split(release, model, preprocess, views, first.seed, calibration,
                                              first.tta)
        source = {"run": str(first.run), "weights": str(weights), "sha256": sha256_file(weights),
                  "weights_of": meta.get("source"),
                  # where each encoder's training started: traces a deployed model to its ImageNet source
                  "initial_weights": meta.get("initial_weights"), "reference_metrics": None if reference is None else {
                      "split": first.eval_split, "avg_auc": reference["avg_auc"], "avg_acc": reference["avg_acc"]}}
        return cls(first=first, plans=plans, weights=weights, views=views, qat_settings=qat_settings, model=model,
                   preprocess=preprocess, calib=calib, evaluation=evaluation, reference=reference,
                   calibration=calibration, valid=valid, source=source, log=log, on_refused=on_refused)

    def _parity_inputs(self) -> tuple[tuple[np.ndarray, ...], str]:
        """Real cases when the release is at hand (already preprocessed); freshly drawn synthetic ones otherwise."""
        if self.evaluation is not None or self.valid is not None:
            arrays, parity_source = ((self.evaluation[0], f"{self.first.eval_split} cases")
                                     if self.evaluation is not None else (self.valid.inputs, "valid cases"))
            return tuple(a[:PARITY_CASES] for a in arrays), parity_source
        return (synthetic_inputs(self.preprocess, PARITY_CASES, self.first.seed, self.model.input_names),
                "synthetic cases")

    def export_graph(self) -> None:
        """The FP32 ONNX graph every format is built from, checked against PyTorch; the shared manifest."""
        first, model, views = self.first, self.model, self.views
        self.onnx_fp32 = export_onnx(model, self.workdir / "model.onnx", views=views)
        parity, parity_source = self._parity_inputs()
        onnx = run_isolated(onnx_probabilities, self.onnx_fp32, parity, what="ONNX parity check", log=self.log)
        diff = float(np.abs(onnx - run_torch(model, *parity, views=views)).max())
        self.log(f"ONNX parity with PyTorch on {len(parity[0])} {parity_source}: max |probability difference| "
                 f"{diff:.2e}")
        if diff > PARITY_TOLERANCE:
            raise ConfigError(f"{first.run}: ONNX export differs from PyTorch by {diff:.2e} (> {PARITY_TOLERANCE})")
        self.source["onnx_parity_max_abs_diff"] = diff
        self.manifest = _shared_manifest(model, self.preprocess, self.source, self.calibration)
        self.manifest["tta"] = None if first.tta is None else {
            "set": first.tta, "views": list(views),
            "how": "one model call: every view of both photos stacked on the batch axis, the per-task "
                   "probabilities averaged; temperatures and thresholds refitted on the valid split's TTA outputs"}

    def context(self, req: ExportRequest, workdir: Path) -> BundleContext:
        """What one target's format functions read, with this request's INT8 gate limits."""
        margin = DEFAULT_INT8_MARGIN if req.max_auc_drop is None else req.max_auc_drop
        flips = DEFAULT_MAX_FLIP_RATE if req.max_flip_rate is None else req.max_flip_rate
        valid = self.valid
        settings = None if valid is None else replace(valid.settings, max_auc_drop=margin, max_flip_rate=flips)
        return BundleContext(
            manifest=self.manifest, onnx_fp32=self.onnx_fp32, has_attention=openvino_export.has_attention(self.model),
            calib=self.calib, evaluation=self.evaluation,
            valid=None if valid is None else replace(valid, settings=settings), reference=self.reference,
            eval_split=self.first.eval_split, workdir=workdir, accuracy_control=req.accuracy_control,
            int8_method=req.int8_method,
            # one student for the pass: its folder is shared by the targets (export/qat.py)
            qat=None if self.qat_settings is None else qat.QatJob(
                self.weights, self.first.data, self.workdir / "qat", self.qat_settings, self.views,
                (self.calibration or {}).get("temperatures")))

    def export_target(self, plan: ExportPlan, workdir: Path) -> list[Path]:
        """One target's bundles, each staged and renamed into place; returns those written. A refused INT8
        goes to `on_refused` (raises without it); a worker's crash loses that bundle only (see `run`)."""
        req, target, destinations = plan
        ctx = self.context(req, workdir)
        workdir.mkdir()
        done = []
        # INT8 first: it is this target's long job (the search), and what it does not need, the target's
        # other bundles, can wait for it without lengthening the pass (see `longest_first`).
        for precision, destination in sorted(destinations.items(), key=lambda item: item[0] != "int8"):
            try:
                with staged_bundle(destination, force=req.force) as directory:
                    build_bundle(ctx, self.model, target, precision, directory, self.log)
            except int8_gate.NoPassingInt8 as refusal:
                if self.on_refused is None:
                    raise
                self.on_refused(refusal)
                continue
            except NativeCrash as crash:       # this bundle is lost, not the others: reported at the end
                self.log(str(crash))
                self.crashes.append(NativeCrash(f"{destination}: {crash}"))
                continue
            self.log(f"wrote {destination}")
            done.append(destination)
        return done

    def run(self) -> list[Path]:
        """The ONNX graph, then every target's bundles, in a scratch folder removed at the end; the bundles
        written, in the order asked. A worker's crash is raised once the other bundles are written."""
        with tempfile.TemporaryDirectory(prefix="edgederm-export-") as tmp:
            self.workdir = Path(tmp)
            self.export_graph()
            written = self._export_targets()
        if self.crashes:
            crashes = self.crashes
            more = f" ({len(crashes) - 1} more bundle(s) lost the same way, see the log)" if len(crashes) > 1 else ""
            raise NativeCrash(f"{crashes[0]}{more}")
        return written

    def _export_targets(self) -> list[Path]:
        # Targets run side by side. An INT8 search spends much of its time single-threaded (OpenVINO
        # compiles, onnxruntime's quantize_static rewriting the graph, NNCF's bias correction), so on
        # a 2-core CPU the OpenVINO and Jetson searches together take little longer than the slower one.
        # Each target works in its own scratch folder and stages its own bundles; results are the same
        # as one after the other (each inference is single-stream; nothing is shared but read-only inputs).
        pool = ThreadPoolExecutor(max_workers=CONCURRENT_TARGETS, thread_name_prefix="export")
        try:
            jobs = {i: pool.submit(self.export_target, plan, self.workdir / f"{i}-{plan.target.name}")
                    for i, plan in longest_first(self.plans)}
            return [path for i in sorted(jobs) for path in jobs[i].result()]     # in the order asked
        finally:
            # On an error or Ctrl-C, targets not yet started never start; a running one finishes its
            # staged bundle (threads cannot be stopped), so nothing is left half-written either way.
            pool.shutdown(wait=True, cancel_futures=True)


def export_many(requests: list[ExportRequest], log: Callable[[str], None] = print,
                on_refused: Callable[[int8_gate.NoPassingInt8], None] | None = None) -> list[Path]:
    """Several targets of one run in one pass: the model, the ONNX graph and its parity check, the
    calibration set and the valid and test arrays are made once (the quickstart exports four targets).

    Every argument is checked before any work. A refused INT8 bundle (no graph passes the gate on valid)
    raises, unless `on_refused` takes it: then the other bundles are still written."""
    return ExportSession.open(requests, log, on_refused).run()
