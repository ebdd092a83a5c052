"""ONNX -> OpenVINO IR at FP32, FP16 (compressed weights) and INT8 (NNCF).

INT8 uses NNCF post-training quantization on the calibration set, with the
transformer model type whenever the model has attention (every EdgeDerm model
does: the asymmetric attention blocks; `has_attention`). The INT8 search
(export/int8_gate.py) may then keep named layers in float (`keep_in_float`,
on the quantized model: no second calibration) or turn to
`nncf.quantize_with_accuracy_control` with agreement with the FP32 model's
decisions as its metric. During the search weights stay FP32 behind their
FakeQuantize; `finalize` stores them as int8 before the model is saved, as
NNCF would have. NNCF's MIXED preset (asymmetric activations) is fine for
OpenVINO; the TensorRT path quantizes separately and symmetrically
(tensorrt_export.py).

Every model scored here is compiled as the runtime compiles a bundle
(`Scorer`, through edgederm/runtime/openvino_backend.py `compile_static`): static
shapes, FP32 and INT8 pinned to INFERENCE_PRECISION_HINT=f32 (so the FP32
reference stays FP32, and an INT8 model's float operations run as they were
gated, on CPUs that would otherwise run bf16), FP16 with the CPU's own choice.
The INT8 search scores saved IR (export/bundles.py), not the in-memory NNCF model.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import openvino as ov

from edgederm import labels as L
from edgederm.calibration.adapters import nncf_dataset
from edgederm.calibration.selection import CalibrationSet
from edgederm.runtime.openvino_backend import GATED_PRECISION, compile_static, ran_with

if TYPE_CHECKING:
    from edgederm.export.int8_gate import ValidSplit


def convert(onnx_path: Path) -> ov.Model:
    return ov.convert_model(str(onnx_path))


def read(xml_path: Path) -> ov.Model:
    return ov.Core().read_model(str(xml_path))


def save_ir(model: ov.Model, xml_path: Path, fp16: bool) -> Path:
    ov.save_model(model, str(xml_path), compress_to_fp16=fp16)
    return xml_path


SCORING_BATCH = 16


class Scorer:
    """`scorer(*inputs)` -> N x 24 probabilities (task outputs concatenated in schema order), `inputs` in the
    model's input order: the model compiled on the CPU as the runtime compiles a bundle of `precision`
    (`compile_static`: one static batch, the float precision GATED_PRECISION names, which the bundle then
    records; `float_precision` is what it really ran in). Inputs go through in chunks of SCORING_BATCH, the
    last one padded, so one compilation serves every call."""

    def __init__(self, model: ov.Model | Path, precision: str):
        core = ov.Core()
        model = core.read_model(str(model)) if isinstance(model, Path) else model
        self.precision_hint = GATED_PRECISION[precision]
        self.compiled = compile_static(core, model, SCORING_BATCH, self.precision_hint)
        self.float_precision = ran_with(self.compiled)
        self.names = [i.get_any_name() for i in self.compiled.inputs]
        self.outputs = [self.compiled.output(name) for name in L.TASK_KEYS]

    def __call__(self, *inputs: np.ndarray) -> np.ndarray:
        request = self.compiled.create_infer_request()
        count, out = len(inputs[0]), []
        for start in range(0, count, SCORING_BATCH):
            chunk = [x[start:start + SCORING_BATCH] for x in inputs]
            real = len(chunk[0])
            if real < SCORING_BATCH:      # padded with copies of its last case; the copies' rows are dropped
                chunk = [np.concatenate([x, np.repeat(x[-1:], SCORING_BATCH - real, axis=0)]) for x in chunk]
            result = request.infer(dict(zip(self.names, chunk, strict=True)))
            out.append(np.concatenate([result[o] for o in self.outputs], axis=1)[:real])
        return np.concatenate(out)


def probability_tail(model: ov.Model) -> list[str]:
    """Names of the operations between the heads' softmax and the outputs: the
    branch-weighted sum P_FI. They stay in float: a sliver of the compute, and
    quantizing them makes a task's probabilities stop summing to one. Walks
    back from the outputs and stops at the heads' Softmax, so attention
    softmaxes inside a transformer encoder are never reached."""
    names: set[str] = set()
    frontier = [result.input_value(0).get_node() for result in model.get_results()]
    while frontier:
        op = frontier.pop()
        if op.get_type_name() in ("Softmax", "Constant", "Parameter") or op.get_friendly_name() in names:
            continue
        names.add(op.get_friendly_name())
        frontier.extend(value.get_node() for value in op.input_values())
    return sorted(names)


def has_attention(model) -> bool:
    """Whether NNCF's transformer model type applies: an attention block anywhere, fusion included.
    That type adds SmoothQuant and leaves elementwise operations (squeeze-excitation scales, residual
    additions) unquantized. Measured on the tiny model's valid split (benchmarks/dev/int8_methods.py):
    with the default type, even 9 of 38 blocks in float left 2.5 % of seven-point readings changed;
    with the transformer type, 4 blocks in float changed 0.8 %, at the same speed."""
    return any("Attention" in type(m).__name__ for m in model.modules())


def quantize_int8(model: ov.Model, calib: CalibrationSet, transformer: bool, **nncf_options) -> ov.Model:
    """Plain INT8 through NNCF, weights left FP32 behind their FakeQuantize (see `finalize`).
    `nncf_options` override nncf.quantize's arguments (benchmarks/dev/int8_methods.py compares a few)."""
    import nncf
    arguments = {"model_type": _model_type(transformer), "subset_size": len(calib),
                 "ignored_scope": nncf.IgnoredScope(names=probability_tail(model), validate=False),
                 "advanced_parameters": _uncompressed(), **nncf_options}
    return nncf.quantize(model, nncf_dataset(calib), **arguments)


def quantize_for_agreement(model: ov.Model, calib: CalibrationSet, transformer: bool, valid: ValidSplit) -> ov.Model:
    """NNCF accuracy control with agreement as its metric: the share of the valid cases whose decisions (read
    as the device reads them, `valid.calibration`) match the FP32 model's (1.0 for FP32 itself); NNCF returns
    quantized operations to float, the most harmful first, until the disagreement is within the gate's flip
    limit. Each case's probabilities go back with the metric, so NNCF ranks its quantizers by how far they
    move the outputs (its normalised squared error) rather than by a handful of flips."""
    from edgederm.scoring.gate import agreement as decisions_kept
    inputs = valid.inputs
    max_disagreement = (valid.settings.max_flip_rate or 100.0) / 100

    def agreement(probs: np.ndarray, cases: list[int]) -> float:
        return decisions_kept(valid.reference[cases], probs, valid.calibration)

    import nncf
    items = [(tuple(x[i:i + 1] for x in inputs), i) for i in range(len(inputs[0]))]
    validation_set = nncf.Dataset(items, lambda item: dict(zip(calib.names, item[0])))

    def validate(compiled: ov.CompiledModel, data) -> tuple[float, list[list[np.ndarray]]]:
        # NNCF hands over its own compilation of its in-memory candidate: scored as NNCF compiled it, so
        # this metric only steers NNCF; its result is judged again as saved IR (int8_gate.search_openvino).
        data = list(data)
        probs = _run_compiled(compiled, *(np.concatenate([d[0][k] for d in data]) for k in range(len(calib.names))))
        # per case, the model's outputs as NNCF collects them itself (one array per task, in output order)
        return agreement(probs, [d[1] for d in data]), [[row[None, L.TASK_SLICES[k]] for k in L.TASK_KEYS]
                                                         for row in probs]

    return nncf.quantize_with_accuracy_control(
        model, nncf_dataset(calib), validation_set, validate, max_drop=max_disagreement,
        drop_type=nncf.DropType.ABSOLUTE, model_type=_model_type(transformer), subset_size=len(calib),
        ignored_scope=nncf.IgnoredScope(names=probability_tail(model), validate=False),
        advanced_quantization_parameters=_uncompressed())


def _run_compiled(compiled: ov.CompiledModel, *inputs: np.ndarray) -> np.ndarray:
    names = [i.get_any_name() for i in compiled.inputs]
    result = compiled.create_infer_request().infer(dict(zip(names, inputs, strict=True)))
    return np.concatenate([result[compiled.output(name)] for name in L.TASK_KEYS], axis=1)


def _model_type(transformer: bool):
    import nncf
    return nncf.ModelType.TRANSFORMER if transformer else None


def _uncompressed():
    """Keep weights FP32 behind FakeQuantize while the search may still return layers to float."""
    import nncf
    return nncf.AdvancedQuantizationParameters(backend_params={"compress_weights": False})


def _belongs(op_name: str, layers: set[str]) -> bool:
    """OpenVINO names an ONNX node's ops after it: Conv 'x/Conv' becomes 'x/Conv/WithoutBiases' + 'x/Conv'."""
    return op_name in layers or any(op_name.startswith(layer + "/") for layer in layers)


def keep_in_float(int8: ov.Model, fp32: ov.Model, layers: list[str]) -> ov.Model:
    """A copy of `int8` in which the named layers (ONNX node names) run in float: the FakeQuantize
    in front of each of their inputs (activations and weights) is bypassed, and the bias after them is
    the FP32 model's again (NNCF's bias correction moved it to absorb the quantization error they no
    longer have). Everything else stays as calibrated."""
    model, wanted = int8.clone(), set(layers)
    fp32_ops = {op.get_friendly_name(): op for op in fp32.get_ops()}
    for op in model.get_ops():
        if op.get_type_name() in ("FakeQuantize", "Constant", "Parameter", "Result") or not _belongs(
                op.get_friendly_name(), wanted):
            continue
        for port in op.inputs():
            source = port.get_source_output().get_node()
            if source.get_type_name() == "FakeQuantize":
                port.replace_source_output(source.input_value(0))
        original = fp32_ops.get(op.get_friendly_name())
        if original is None or op.get_type_name() != "Add":
            continue
        for i, port in enumerate(op.inputs()):          # the bias Add: its constant as in the FP32 model
            source, before = port.get_source_output().get_node(), original.input_value(i).get_node()
            if source.get_type_name() == "Constant" and before.get_type_name() == "Constant":
                port.replace_source_output(ov.opset13.constant(before.get_data()).output(0))
    model.validate_nodes_and_infer_types()
    return model


def finalize(int8: ov.Model) -> ov.Model:
    """Weights as int8 constants (OpenVINO's own weight compression of FakeQuantize'd constants): the
    form NNCF saves by default; the outputs are bit-identical."""
    from openvino._offline_transformations import compress_quantize_weights_transformation
    model = int8.clone()
    compress_quantize_weights_transformation(model)
    return model
