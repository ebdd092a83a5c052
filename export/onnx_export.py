"""PyTorch -> ONNX: the network's named inputs (`ModelConfig.inputs`: clinical and
dermoscopy, or clinical alone), the fused per-task probabilities P_FI as
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
import torch

from edgederm import labels as L
from edgederm.data.inputs import input_shape
from edgederm.models.heads import BranchNet, split_tasks
from edgederm.models.tta import NO_TTA, tta_probabilities

OPSET = 17
OUTPUT_NAMES = L.TASK_KEYS


class FusedProbabilities(torch.nn.Module):
    """What every exported model computes: P_FI per task, averaged over `views` when the bundle has test-time
    augmentation built in (edgederm.models.tta: one call, the views stacked on the batch axis)."""

    def __init__(self, model: BranchNet, views: tuple[str, ...] = NO_TTA):
        super().__init__()
        self.model = model
        self.views = tuple(views)

    def forward(self, *inputs: torch.Tensor):
        return tuple(split_tasks(tta_probabilities(self.model, inputs, self.views)).values())


def export_onnx(model: BranchNet, path: Path, opset: int = OPSET, views: tuple[str, ...] = NO_TTA) -> Path:
    wrapper = FusedProbabilities(model, views).eval()
    names = model.input_names
    example = tuple(torch.zeros(2, *input_shape(name, model.cfg.img_size)) for name in names)
    dynamic = {name: {0: "batch"} for name in (*names, *OUTPUT_NAMES)}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")   # tracer warnings about shape checks that are constant per model
        torch.onnx.export(wrapper, example, str(path), dynamo=False, opset_version=opset,
                          input_names=list(names), output_names=list(OUTPUT_NAMES),
                          dynamic_axes=dynamic, do_constant_folding=True)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    return path


@torch.no_grad()
def run_torch(model: BranchNet, *inputs: np.ndarray, batch_size: int = 16,
              views: tuple[str, ...] = NO_TTA) -> np.ndarray:
    """N x 24 probabilities; `inputs` in the model's input order; averaged over `views` (edgederm.models.tta)."""
    model.eval()
    out = [tta_probabilities(model, tuple(torch.from_numpy(x[i:i + batch_size]) for x in inputs), views).numpy()
           for i in range(0, len(inputs[0]), batch_size)]
    return np.concatenate(out)
