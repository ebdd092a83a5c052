"""OpenVINO on CPU, integrated GPU, NPU or AUTO. FP32 bundles are compiled with
INFERENCE_PRECISION_HINT=f32 on every device, so they stay the honest FP32
reference where OpenVINO would otherwise pick f16 (GPU) or bf16 (AMX CPUs).

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


def precision_config(precision: str) -> dict:
    """GPUs default to f16 and some CPUs to bf16: an FP32 bundle stays FP32 everywhere."""
    return {"INFERENCE_PRECISION_HINT": "f32"} if precision == "fp32" else {}


def compile_static(core: ov.Core, model: ov.Model, batch: int, precision: str,
                   device: str = "CPU") -> ov.CompiledModel:
    """`model` (left unchanged) compiled for one batch size, every input shape static: how every OpenVINO
    bundle is compiled, on the device and by the export that scores and gates it."""
    static = model.clone()
    static.reshape({i.get_any_name(): [batch, *i.get_partial_shape()[1:]] for i in static.inputs})
    return core.compile_model(static, device, precision_config(precision))


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
        self.model = core.read_model(str(bundle / "model.xml"))
        self._requests: dict[int, tuple] = {}
        self._request(1)      # compile the common case now, so load time includes it

    def _request(self, batch: int) -> tuple:
        if batch not in self._requests:
            compiled = compile_static(self.core, self.model, batch, self.precision, self.device)
            self._requests[batch] = (compiled.create_infer_request(), [compiled.output(n) for n in L.TASK_KEYS])
        return self._requests[batch]

    def _forward(self, *inputs: np.ndarray) -> np.ndarray:
        request, outputs = self._request(len(inputs[0]))
        result = request.infer(dict(zip(self.input_names, inputs)))
        return np.concatenate([result[o] for o in outputs], axis=1)
