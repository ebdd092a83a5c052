"""ONNX -> OpenVINO IR at FP32, FP16 (compressed weights) and INT8 (NNCF).

INT8 uses NNCF post-training quantization on the calibration set, with the
transformer model type when an encoder is a transformer; with a maximum AUC
drop it uses `nncf.quantize_with_accuracy_control`, scored by averaged AUC on
the validation split, which keeps the layers that hurt AUC in higher precision.
NNCF's MIXED preset (asymmetric activations) is fine for OpenVINO; the
TensorRT path quantizes separately and symmetrically (tensorrt_export.py).

FP32 models are compiled with INFERENCE_PRECISION_HINT=f32, so the FP32
reference stays FP32 on CPUs that would otherwise run bf16 (AMX); FP16 and
INT8 are scored as the runtime runs them (edgederm/runtime/openvino_backend.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov

from edgederm import labels as L
from edgederm.calibration.adapters import INPUT_NAMES, nncf_dataset
from edgederm.calibration.selection import CalibrationSet
from edgederm.evaluation.metrics import averaged_auc

F32_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}


def convert(onnx_path: Path) -> ov.Model:
    return ov.convert_model(str(onnx_path))


def save_ir(model: ov.Model, xml_path: Path, fp16: bool) -> Path:
    ov.save_model(model, str(xml_path), compress_to_fp16=fp16)
    return xml_path


def compile_cpu(model: ov.Model | Path, precision: str = "fp32") -> ov.CompiledModel:
    """As the runtime compiles it: FP32 pinned to f32; FP16 / INT8 with the CPU's own choice."""
    config = F32_CONFIG if precision == "fp32" else {}
    return ov.Core().compile_model(model if isinstance(model, ov.Model) else str(model), "CPU", config)


def run_openvino(compiled: ov.CompiledModel, clinical: np.ndarray, dermoscopy: np.ndarray,
                 batch_size: int = 16) -> np.ndarray:
    """N x 24 probabilities (task outputs concatenated in schema order)."""
    outputs = [compiled.output(name) for name in L.TASK_KEYS]
    request = compiled.create_infer_request()
    out = []
    for start in range(0, len(clinical), batch_size):
        result = request.infer({INPUT_NAMES[0]: clinical[start:start + batch_size],
                                INPUT_NAMES[1]: dermoscopy[start:start + batch_size]})
        out.append(np.concatenate([result[o] for o in outputs], axis=1))
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


def quantize_int8(model: ov.Model, calib: CalibrationSet, transformer: bool,
                  validation: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                  max_auc_drop_points: float | None = None) -> ov.Model:
    """INT8 through NNCF; with `max_auc_drop_points` and `validation` (clinical, dermoscopy,
    labels), accuracy-controlled quantization on averaged AUC."""
    import nncf
    model_type = nncf.ModelType.TRANSFORMER if transformer else None
    calibration = nncf_dataset(calib)
    ignored = nncf.IgnoredScope(names=probability_tail(model), validate=False)
    if max_auc_drop_points is None:
        return nncf.quantize(model, calibration, model_type=model_type, subset_size=len(calib), ignored_scope=ignored)
    clinical, dermoscopy, labels = validation
    items = [(clinical[i:i + 1], dermoscopy[i:i + 1], i) for i in range(len(labels))]
    validation_set = nncf.Dataset(items, lambda item: {INPUT_NAMES[0]: item[0], INPUT_NAMES[1]: item[1]})

    def validate(compiled: ov.CompiledModel, data) -> float:
        data = list(data)
        probs = run_openvino(compiled, np.concatenate([d[0] for d in data]), np.concatenate([d[1] for d in data]))
        return averaged_auc(probs, labels[[d[2] for d in data]])

    return nncf.quantize_with_accuracy_control(
        model, calibration, validation_set, validate, max_drop=max_auc_drop_points / 100.0,
        drop_type=nncf.DropType.ABSOLUTE, model_type=model_type, subset_size=len(calib), ignored_scope=ignored)
