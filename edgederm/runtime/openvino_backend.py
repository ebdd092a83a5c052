"""OpenVINO on CPU, integrated GPU, NPU or AUTO. A bundle is compiled with the
INFERENCE_PRECISION_HINT its export scored and gated it with (manifest
`inference_precision`: f32 for FP32 and INT8 bundles) on every device, so an
FP32 bundle stays the honest FP32 reference and an INT8 bundle's float
operations run as they were gated, where OpenVINO would otherwise pick f16
(GPU) or bf16 (CPUs with AVX512_BF16 or AMX). `float_precision` is read back
from the compiled model: what it really runs in.

The IR has a dynamic batch; each batch size actually used gets its own
static-shape compilation (`compile_static`, cached), because static kernels are
markedly faster (measured here on Swin-T: 80 ms dynamic vs 68 ms static at
batch 1, FP32), NPUs take static shapes only, and on CPUs with AMX an INT8
model with any dynamic input dimension can segfault at inference at small
input sizes (upstream openvinotoolkit/openvino#37577, open). The export
scores its bundles through the same function, so the figures in a manifest
are those of the model as it runs here."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov

from edgederm import labels as L
from edgederm.errors import EdgeDermError
from edgederm.runtime.predictor import Predictor

DEVICES = ("CPU", "GPU", "NPU", "AUTO")


# The float precision the export scores and gates each bundle precision with (INFERENCE_PRECISION_HINT),
# recorded in the manifest as `inference_precision`. GPUs default to f16 and CPUs with AVX512_BF16 or AMX to
# bf16 for the operations an INT8 model leaves in float: the gate's evidence then would not hold on them.
# FP16 bundles are not gated and keep the device's own choice (None).
GATED_PRECISION = {"fp32": "f32", "int8": "f32", "fp16": None}
FLOAT_PRECISIONS = ("f32", "bf16", "f16", None)     # what a manifest may record (None: the device's default)


def inference_precision(manifest: dict) -> str | None:
    """The INFERENCE_PRECISION_HINT a bundle runs with: the one its export recorded, or, for bundles written
    before it was recorded, GATED_PRECISION (their exports ran f32 on CPUs without bf16)."""
    if "inference_precision" not in manifest:
        return GATED_PRECISION.get(manifest["precision"])
    hint = manifest["inference_precision"]
    if hint not in FLOAT_PRECISIONS:
        raise EdgeDermError(f"manifest.json: inference_precision {hint!r} is not one OpenVINO takes "
                            f"(choose from {', '.join(map(str, FLOAT_PRECISIONS))}); re-export the bundle")
    return hint


def compile_static(core: ov.Core, model: ov.Model, batch: int, precision_hint: str | None,
                   device: str = "CPU") -> ov.CompiledModel:
    """`model` (left unchanged) compiled for one batch size, every input shape static, with
    INFERENCE_PRECISION_HINT `precision_hint` (None: the device's default): how every OpenVINO bundle is
    compiled, on the device and by the export that scores and gates it."""
    static = model.clone()
    static.reshape({i.get_any_name(): [batch, *i.get_partial_shape()[1:]] for i in static.inputs})
    config = {} if precision_hint is None else {"INFERENCE_PRECISION_HINT": precision_hint}
    return core.compile_model(static, device, config)


def ran_with(compiled: ov.CompiledModel) -> str:
    """The float precision a compiled model really runs its non-quantized operations in, read back."""
    return compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()


class OpenVinoPredictor(Predictor):
    backend = "openvino"

    def __init__(self, bundle: Path, manifest: dict, device: str = "CPU"):
        super().__init__(bundle, manifest)
        if device not in DEVICES:
            raise EdgeDermError(f"unknown OpenVINO device {device!r} (choose from {', '.join(DEVICES)})")
        core = ov.Core()
        kinds = {d.split(".")[0] for d in core.available_devices}     # "GPU.0", "GPU.1" on two-GPU laptops
        if device != "AUTO" and device not in kinds:
            raise EdgeDermError(f"OpenVINO device {device} is not available here "
                                f"(available: {', '.join(core.available_devices)})")
        self.core, self.device = core, device
        self.precision_hint = inference_precision(manifest)
        self.model = core.read_model(str(bundle / "model.xml"))
        self._requests: dict[int, tuple] = {}
        self._request(1)      # compile the common case now, so load time includes it

    def _request(self, batch: int) -> tuple:
        if batch not in self._requests:
            compiled = compile_static(self.core, self.model, batch, self.precision_hint, self.device)
            self.float_precision = ran_with(compiled)
            self._requests[batch] = (compiled.create_infer_request(), [compiled.output(n) for n in L.TASK_KEYS])
        return self._requests[batch]

    def _forward(self, *inputs: np.ndarray) -> np.ndarray:
        request, outputs = self._request(len(inputs[0]))
        result = request.infer(dict(zip(self.input_names, inputs)))
        return np.concatenate([result[o] for o in outputs], axis=1)
