"""PyTorch -> ONNX: two named inputs, the fused per-task probabilities P_FI as
outputs (one per task, named by task key), dynamic batch, opset 17 (LayerNorm
as one node, which TensorRT and OpenVINO both fuse).

We use torch's TorchScript-based exporter (`dynamo=False`): its graphs are
what onnxruntime's quantizer and TensorRT's parser have been exercised on for
years, and it needs no extra package (the dynamo exporter needs onnxscript).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from edgederm import labels as L
from edgederm.calibration.adapters import INPUT_NAMES
from edgederm.models.heads import split_tasks
from edgederm.models.multimodal import MultiModalNet

OPSET = 17
OUTPUT_NAMES = L.TASK_KEYS


class FusedProbabilities(torch.nn.Module):
    """What every exported model computes: P_FI per task."""

    def __init__(self, model: MultiModalNet):
        super().__init__()
        self.model = model

    def forward(self, clinical: torch.Tensor, dermoscopy: torch.Tensor):
        return tuple(split_tasks(self.model.fused_probabilities(clinical, dermoscopy)).values())


def export_onnx(model: MultiModalNet, path: Path, opset: int = OPSET) -> Path:
    wrapper = FusedProbabilities(model).eval()
    size = model.cfg.img_size
    example = (torch.zeros(2, 3, size, size), torch.zeros(2, 3, size, size))
    dynamic = {name: {0: "batch"} for name in (*INPUT_NAMES, *OUTPUT_NAMES)}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")   # tracer warnings about shape checks that are constant per model
        torch.onnx.export(wrapper, example, str(path), dynamo=False, opset_version=opset,
                          input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                          dynamic_axes=dynamic, do_constant_folding=True)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    return path


def onnxruntime_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session: ort.InferenceSession, clinical: np.ndarray, dermoscopy: np.ndarray,
             batch_size: int = 16) -> np.ndarray:
    """N x 24 probabilities (task outputs concatenated in schema order)."""
    out = []
    for start in range(0, len(clinical), batch_size):
        feeds = {INPUT_NAMES[0]: clinical[start:start + batch_size], INPUT_NAMES[1]: dermoscopy[start:start + batch_size]}
        out.append(np.concatenate(session.run(list(OUTPUT_NAMES), feeds), axis=1))
    return np.concatenate(out)


@torch.no_grad()
def run_torch(model: MultiModalNet, clinical: np.ndarray, dermoscopy: np.ndarray, batch_size: int = 16) -> np.ndarray:
    model.eval()
    out = [model.fused_probabilities(torch.from_numpy(clinical[i:i + batch_size]),
                                     torch.from_numpy(dermoscopy[i:i + batch_size])).numpy()
           for i in range(0, len(clinical), batch_size)]
    return np.concatenate(out)
