"""Multi-task heads and the weighted fusion of the three branches' predictions.

Each head emits the eight tasks' logits concatenated (labels.TOTAL_CLASSES
wide, task order and slices from `edgederm.labels`).
"""
from __future__ import annotations

import torch
from torch import nn

from edgederm import labels as L

BRANCHES: tuple[str, ...] = ("clinical", "derm", "fusion")   # P_C, P_D, P_FU


class MultiTaskHead(nn.Module):
    """Global average pooled features -> dropout -> one linear layer for all tasks."""

    def __init__(self, in_features: int, drop_rate: float):
        super().__init__()
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, L.TOTAL_CLASSES)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(pooled))


def split_tasks(concatenated: torch.Tensor) -> dict[str, torch.Tensor]:
    """B x TOTAL_CLASSES -> {task key: B x num_classes}."""
    return {key: concatenated[:, s] for key, s in L.TASK_SLICES.items()}


def task_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax within each task's slice; the result keeps the concatenated layout."""
    return torch.cat([part.softmax(dim=1) for part in split_tasks(logits).values()], dim=1)


def fused_probabilities(branch_logits: dict[str, torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """P_FI = W_C P_C + W_D P_D + W_FU P_FU, per task, with `weights` in BRANCHES order."""
    return sum(w * task_softmax(branch_logits[b]) for w, b in zip(weights, BRANCHES))
