"""One function per bundle format, each filling a staged bundle directory.

The ONNX, OpenVINO and Jetson formats run native code (onnxruntime, OpenVINO,
NNCF), so the exporter runs each in a worker process (export/isolation.py):
they take plain data (`BundleContext`, no torch) and log through the `log`
they are given. Every figure a manifest records is measured on what ships:
the saved graph or IR, compiled as the runtime compiles it; the OpenVINO INT8
search saves each candidate and scores that (`saved_ir_scorer`), never the
in-memory NNCF model. The torch bundle needs the network itself and stays in
the exporter.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from edgederm import labels as L
from edgederm.calibration.selection import CalibrationSet
from edgederm.data.inputs import METADATA_INPUT
from edgederm.export import fp16_typing, int8_gate, jetson_check, openvino_export, qat, tensorrt_export
from edgederm.export.formats import Target
from edgederm.export.onnxruntime_scoring import onnxruntime_session, run_onnx
from edgederm.runtime.bundle import write_manifest
from edgederm.runtime.engine import INT8_FP16_ONNX, BuildPlan
from edgederm.scoring.metrics import compute_metrics
from edgederm.staging import destination_name

Log = Callable[[str], None]
# How the OpenVINO figures in a manifest were measured (the manifest says so; see module docstring).
OPENVINO_SCORED_AS = ("saved IR, compiled as the runtime compiles it (static shapes, batch "
                      f"{openvino_export.SCORING_BATCH}; the manifest's inference_precision)")


@dataclass
class BundleContext:
    """What every format function needs, computed once by the exporter; plain data, so it pickles into a
    worker."""
    manifest: dict                     # the fields every bundle of this run shares (model, preprocess, source, ...)
    onnx_fp32: Path
    has_attention: bool                # NNCF's transformer model type (openvino_export.has_attention)
    calib: CalibrationSet | None
    evaluation: tuple[tuple[np.ndarray, ...], np.ndarray] | None     # (the model's inputs, labels)
    valid: int8_gate.ValidSplit | None                                # for the INT8 gate
    reference: dict | None                                            # FP32 PyTorch metrics
    eval_split: str
    workdir: Path                                                     # scratch space of this target
    accuracy_control: bool = False
    qat: qat.QatJob | None = None       # the INT8 search's QAT attempt (export/qat.py); None: skipped
    int8_method: str = "search"         # the whole INT8 search, or one attempt (int8_gate.INT8_METHODS)


def new_manifest(ctx: BundleContext, target: Target, precision: str, graphs: list[str]) -> dict:
    return {"target": target.name, "backend": target.backend, "precision": precision, "graphs": graphs,
            **ctx.manifest, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def score(ctx: BundleContext, name: str, predict: Callable[..., np.ndarray], log: Log) -> dict | None:
    """Metrics of one variant (`predict(*inputs)`) on the evaluation split, with the drop from the FP32 reference."""
    if ctx.evaluation is None:
        return None
    inputs, labels = ctx.evaluation
    m = compute_metrics(predict(*inputs), labels)
    drop = 100 * (ctx.reference["avg_auc"] - m["avg_auc"])
    log(f"{name}: {ctx.eval_split} averaged AUC {100 * m['avg_auc']:.2f} "
        f"({-drop:+.2f} points vs PyTorch FP32 {100 * ctx.reference['avg_auc']:.2f})")
    return {"split": ctx.eval_split, "cases": m["cases"], "avg_auc": m["avg_auc"], "avg_acc": m["avg_acc"],
            "auc": m["auc"], "reference": "PyTorch FP32", "reference_avg_auc": ctx.reference["avg_auc"],
            "auc_drop_points": drop}


def onnx_bundle(ctx: BundleContext, target: Target, precision: str, directory: Path, log: Log) -> None:
    (directory / "model.onnx").write_bytes(ctx.onnx_fp32.read_bytes())
    session = onnxruntime_session(directory / "model.onnx")
    manifest = new_manifest(ctx, target, precision, ["model.onnx"])
    manifest["metrics"] = score(ctx, "onnx fp32", lambda *x: run_onnx(session, *x), log)
    write_manifest(directory, manifest)


def saved_ir_scorer(model, workdir: Path) -> Callable[..., np.ndarray]:
    """A predict function for an in-memory INT8 candidate that scores what would ship: the model finalized
    (int8 weights), saved as IR, read back and compiled as the runtime compiles an INT8 bundle."""
    def predict(*inputs: np.ndarray) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="candidate-", dir=workdir) as tmp:
            xml = openvino_export.save_ir(openvino_export.finalize(model), Path(tmp) / "model.xml", fp16=False)
            scorer = openvino_export.Scorer(xml, "int8")
            probabilities = scorer(*inputs)
            del scorer          # releases the IR's mapped weights before the folder goes
        return probabilities
    return predict


def _quantization(attempts: list[int8_gate.Attempt], tool: str, **fields) -> dict:
    """The manifest's `quantization`: the tool of the chosen attempt, and what it kept in float."""
    chosen = attempts[-1]
    if chosen.method == int8_gate.METHOD_QAT:    # NNCF placed its quantizers: the target's own fields do not apply
        tool, fields = chosen.details["qat"]["tool"], {"quantizers": chosen.details["qat"]["quantizers"]}
    return {"tool": tool, **fields, "method": chosen.method, "kept_in_float": chosen.kept_in_float}


def openvino_bundle(ctx: BundleContext, target: Target, precision: str, directory: Path, log: Log) -> None:
    model = openvino_export.convert(ctx.onnx_fp32)
    manifest = new_manifest(ctx, target, precision, ["model.xml", "model.bin"])
    if precision == "int8":
        valid = ctx.valid
        log(f"openvino int8: NNCF on {len(ctx.calib)} calibration cases, gated on the valid split "
            f"({len(valid.labels)} cases), every candidate scored as {OPENVINO_SCORED_AS}")
        candidates = ctx.workdir / "openvino-candidates"
        candidates.mkdir(parents=True, exist_ok=True)

        def accuracy_control():
            return openvino_export.quantize_for_agreement(model.clone(), ctx.calib, ctx.has_attention, valid)

        def student():
            graphs = qat.qat_graphs(ctx.qat, ctx.calib, ctx.has_attention, log)
            return openvino_export.read(graphs.openvino_xml), graphs.record

        plain = openvino_export.quantize_int8(model.clone(), ctx.calib, ctx.has_attention)
        int8, attempts, ranking = int8_gate.search_openvino(
            model, plain, lambda m, blocks: openvino_export.keep_in_float(m, model, blocks),
            lambda candidate: saved_ir_scorer(candidate, candidates),
            accuracy_control if ctx.accuracy_control else None, valid, log,
            qat=None if ctx.qat is None else student, method=ctx.int8_method)
        if int8 is None:
            raise int8_gate.refuse(attempts, valid, "openvino")
        model = openvino_export.finalize(int8)
        manifest["calibration_set"] = ctx.calib.describe()
        manifest["quantization"] = _quantization(attempts, "nncf",
                                                 model_type="transformer" if ctx.has_attention else "default")
        manifest["int8_gate"] = {**int8_gate.record(attempts, valid, ranking), "scored": OPENVINO_SCORED_AS}
    openvino_export.save_ir(model, directory / "model.xml", fp16=precision == "fp16")
    scorer = openvino_export.Scorer(directory / "model.xml", precision)
    # the runtime compiles with this hint (runtime/openvino_backend.py), so the gate's evidence holds on CPUs
    # that would otherwise run the float operations in bf16
    manifest["inference_precision"] = scorer.precision_hint
    manifest["metrics"] = score(ctx, f"openvino {precision}", scorer, log)
    if manifest["metrics"] is not None:
        manifest["metrics"].update(scored=OPENVINO_SCORED_AS, ran_with=scorer.float_precision)
    del scorer
    write_manifest(directory, manifest)


def _onnx_predictor(graph: Path) -> Callable[..., np.ndarray]:
    session = onnxruntime_session(graph)
    return lambda *x: run_onnx(session, *x)


def _fp16_graph(ctx: BundleContext, precision: str, directory: Path, manifest: dict, log: Log) -> None:
    """`model.fp16.onnx`, judged on valid when the export has the release (export/fp16_typing.py): FP16 rounding is
    judged like INT8's and the blocks that lose the decisions stay FP32. The record (`manifest["fp16"]`) says
    whether the gate passed it and which nodes compute in FP32; `engine build` reads it (runtime/engine.py) and
    builds a graph that failed or was never judged only when asked with --ungated."""
    out = directory / "model.fp16.onnx"
    if ctx.valid is None:      # exported without --data: nothing to judge it on, and the record says so
        tensorrt_export.convert_fp16(ctx.onnx_fp32, out)
        manifest["fp16"] = {**fp16_typing.describe(out, [], None, ctx.onnx_fp32), "gate": "not gated",
                            "why": "exported without --data: no valid split to judge the FP16 graph on"}
        return
    kept, attempts, ranking = fp16_typing.search(ctx.onnx_fp32, out, tensorrt_export.convert_fp16, _onnx_predictor,
                                                 ctx.valid, "FP16 graph", log)
    if kept is None and precision == "fp16":
        raise int8_gate.NoPassingInt8("jetson fp16: no FP16 graph passes the gate on the valid split; tried "
                                      + "; ".join(f"{a.method}: {a.result['reasons'][0]}" for a in attempts)
                                      + ". No bundle written")
    if kept is None:
        # an INT8 bundle keeps the whole-FP16 graph, marked failed: `engine build --precision fp16 --ungated` can
        # still build it, and nothing builds it without saying so
        tensorrt_export.convert_fp16(ctx.onnx_fp32, out)
    manifest["fp16"] = fp16_typing.describe(out, attempts, ranking, ctx.onnx_fp32)


def jetson_bundle(ctx: BundleContext, target: Target, precision: str, directory: Path, log: Log) -> None:
    graphs = ["model.fp16.onnx"]
    manifest = new_manifest(ctx, target, precision, graphs)
    if precision != "int8":
        _fp16_graph(ctx, precision, directory, manifest, log)
    if precision == "int8":
        valid = ctx.valid
        log(f"jetson int8: symmetric Q/DQ on {len(ctx.calib)} calibration cases, gated on the valid split "
            f"({len(valid.labels)} cases)")
        out = directory / "model.int8.onnx"
        predictor = _onnx_predictor

        def student(graph: Path):
            graphs = qat.qat_graphs(ctx.qat, ctx.calib, ctx.has_attention, log)
            shutil.copyfile(graphs.qdq_onnx, graph)
            return jetson_check.check_graph(graph), graphs.record

        quantizer = tensorrt_export.QdqQuantizer(ctx.onnx_fp32, ctx.calib, ctx.workdir / "qdq")
        graph, attempts, ranking = int8_gate.search_jetson(quantizer, out, predictor, valid, log,
                                                           qat=None if ctx.qat is None else student,
                                                           method=ctx.int8_method)
        if graph is None:
            raise int8_gate.refuse(attempts, valid, "jetson")
        graphs.insert(0, "model.int8.onnx")
        # after the INT8 search: a refused INT8 bundle needs no FP16 graph, and its search would cost minutes
        _fp16_graph(ctx, precision, directory, manifest, log)
        manifest["calibration_set"] = ctx.calib.describe()
        manifest["quantization"] = _quantization(attempts, tensorrt_export.QDQ_QUANTIZER,
                                                 ops=tensorrt_export.QUANTIZED_OPS)
        manifest["int8_gate"] = int8_gate.record(attempts, valid, ranking)
        # What TensorRT 11 builds (engine.py): the same Q/DQ typed FP16 outside it. FP16 rounding moves some
        # values across a quantization step, so it is gated like any INT8 graph, with the blocks that lose the
        # decisions kept FP32 (export/fp16_typing.py), and left out when none passes.
        typed, attempts, ranking = fp16_typing.search(graph, directory / INT8_FP16_ONNX,
                                                      tensorrt_export.convert_int8_fp16, predictor, valid,
                                                      "FP16-typed INT8 graph, for TensorRT 11", log)
        if typed is not None:
            graphs.append(typed.name)
        manifest["int8_fp16"] = fp16_typing.describe(typed, attempts, ranking, graph)
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
    manifest["metrics"] = score(ctx, f"jetson {precision} ({scored.name} in onnxruntime, CPU)",
                                lambda *x: run_onnx(session, *x), log)
    manifest["engine"] = None
    (directory / "README.md").write_text(_jetson_readme(manifest, destination_name(directory)))
    write_manifest(directory, manifest)


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
    # TensorRT 10's settings from the gate's record (runtime/engine.py); an FP16 graph never judged is built by hand
    # as by `engine build --ungated`
    plan = BuildPlan.for_bundle("10.3.0", manifest["precision"], manifest, name, ungated=True)
    flags = " ".join("--" + f.lower() for f in plan.builder_flags if f != "OBEY_PRECISION_CONSTRAINTS")
    pins = (f"`edgederm engine build` also pins the {len(plan.fp32_operations)} nodes the gate judged in FP32 "
            "(manifest.json `" + ("int8_fp16" if manifest["precision"] == "int8" else "fp16") + ".fp32_operations`); "
            "by hand add `--precisionConstraints=obey --layerPrecisions=NODE:fp32,... --layerOutputTypes=NODE:fp32,...` "
            "for them.\n   " if plan.fp32_operations else "")
    if manifest["precision"] == "int8" and plan.float_ops == "fp32":
        pins = ("The INT8 flag alone: the FP16-typed INT8 graph did not pass the gate, so the layers outside "
                "Q/DQ run FP32, as they were judged.\n   ")
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

   {pins}On TensorRT 8.6 use `--workspace=1024` instead of `--memPoolSize`. On TensorRT 11
   drop `{flags}`: networks are strongly typed and take their precision from the graph{typed}.
   `edgederm engine build` also adds a second optimisation profile tuned for batch 8.
3. Inputs: {inputs}, float32 N x 3 x {size} x {size}, RGB, resized to
   {size} x {size} ({manifest['preprocess']['resize']}), scaled to [0, 1], normalised with mean
   {list(manifest['preprocess']['mean'])} and std {list(manifest['preprocess']['std'])}.
   Outputs: one per task ({', '.join(L.TASK_KEYS)}), probabilities in the class order of
   manifest.json `labels`.{metadata}
"""
