"""The torch bundle's backend: PyTorch eager FP32, the reference, run on the workstation.

It builds the network from this package's model code, which the device side never imports (the import
contract: docs/architecture.md). So it is not in edgederm.runtime: it plugs into it through the
`edgederm.backends` entry point (pyproject.toml), which `edgederm.runtime.load_bundle` looks up only when a
torch bundle is loaded. On a device install, which has no torch, loading one is a one-line error.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch     # at import: without torch, load_bundle's entry-point lookup turns the ImportError into one line

from edgederm.models.io import load_model
from edgederm.runtime.predictor import Predictor


class TorchPredictor(Predictor):
    backend = "torch"

    def __init__(self, bundle: Path, manifest: dict):
        super().__init__(bundle, manifest)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_model(bundle / "model.safetensors").to(self.device).eval()

    def _forward(self, *inputs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = self.model.fused_probabilities(*(torch.from_numpy(x).to(self.device) for x in inputs))
        return out.cpu().numpy()
