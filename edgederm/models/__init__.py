"""The model family: configs and presets, encoders, fusion blocks, heads, the networks.

Names are imported on first use (PEP 562), so `edgederm.models.config` (no torch) can be read on
a device that has no torch installed, and the CLI starts without loading torch and timm."""
from __future__ import annotations

import importlib

_WHERE = {
    "ClinicalOnlyNet": "clinical_only", "ModelConfig": "config",
    "BRANCHES": "heads", "BranchNet": "heads", "fused_probabilities": "heads", "split_tasks": "heads",
    "task_softmax": "heads", "MultiModalNet": "multimodal", "JifMmfaNet": "jif_mmfa",
}
# ModelConfig.architecture -> class
NETWORKS = {"two-encoder": "MultiModalNet", "clinical-only": "ClinicalOnlyNet", "jif-mmfa": "JifMmfaNet"}


def create_model(cfg):
    """Build the network of a ModelConfig with random weights (`edgederm.models.pretrained.initialize` loads
    ImageNet ones)."""
    return __getattr__(NETWORKS[cfg.architecture])(cfg)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"edgederm.models.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'edgederm.models' has no attribute {name!r}")


__all__ = [*_WHERE, "NETWORKS", "create_model"]
