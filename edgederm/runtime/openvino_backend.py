"""OpenVINO on CPU, integrated GPU, NPU or AUTO. On the CPU the FP32 bundle is
compiled with INFERENCE_PRECISION_HINT=f32, so it stays the honest FP32
reference on processors that would otherwise pick bf16."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov

from edgederm import labels as L
from edgederm.errors import EdgeDermError
from edgederm.runtime.predictor import Predictor

DEVICES = ("CPU", "GPU", "NPU", "AUTO")


class OpenVinoPredictor(Predictor):
    backend = "openvino"

    def __init__(self, bundle: Path, manifest: dict, device: str = "CPU"):
        super().__init__(bundle, manifest)
        if device not in DEVICES:
            raise EdgeDermError(f"unknown OpenVINO device {device!r} (choose from {', '.join(DEVICES)})")
        core = ov.Core()
        if device != "AUTO" and device not in core.available_devices:
            raise EdgeDermError(f"OpenVINO device {device} is not available here "
                                f"(available: {', '.join(core.available_devices)})")
        config = {"INFERENCE_PRECISION_HINT": "f32"} if device == "CPU" and self.precision == "fp32" else {}
        self.compiled = core.compile_model(str(bundle / "model.xml"), device, config)
        self.request = self.compiled.create_infer_request()
        self.outputs = [self.compiled.output(name) for name in L.TASK_KEYS]
        self.device = device

    def _forward(self, clinical: np.ndarray, dermoscopy: np.ndarray) -> np.ndarray:
        result = self.request.infer({"clinical": clinical, "dermoscopy": dermoscopy})
        return np.concatenate([result[o] for o in self.outputs], axis=1)
