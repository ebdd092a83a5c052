"""onnxruntime: CPU everywhere; CUDA and TensorRT execution providers when this
onnxruntime build has them and a GPU is present."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgederm import labels as L
from edgederm.runtime.predictor import Predictor

PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class OnnxRuntimePredictor(Predictor):
    backend = "onnxruntime"

    def __init__(self, bundle: Path, manifest: dict, graph: str, providers: list[str] | None = None):
        super().__init__(bundle, manifest)
        available = ort.get_available_providers()
        self.providers = providers or [p for p in PREFERRED if p in available]
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(bundle / graph), options, providers=self.providers)
        self.graph = graph

    def _forward(self, *inputs: np.ndarray) -> np.ndarray:
        outputs = self.session.run(list(L.TASK_KEYS), dict(zip(self.input_names, inputs)))
        return np.concatenate(outputs, axis=1)
