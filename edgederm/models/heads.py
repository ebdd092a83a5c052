"""Multi-task heads and the weighted fusion of the three branches' predictions.

Each head emits the eight tasks' logits concatenated (labels.TOTAL_CLASSES
wide, task order and slices from `edgederm.labels`).
"""
from __future__ import annotations

import torch
from torch import nn

from edgederm import labels as L
from edgederm.errors import ConfigError

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


def fused_probabilities(branch_logits: dict[str, torch.Tensor], weights: torch.Tensor,
                        branches: tuple[str, ...] = BRANCHES) -> torch.Tensor:
    """P_FI = W_C P_C + W_D P_D + W_FU P_FU, per task, with `weights` in `branches` order."""
    return sum(w * task_softmax(branch_logits[b]) for w, b in zip(weights, branches))


class BranchNet(nn.Module):
    """What every EdgeDerm network shares: its inputs come from its config (`ModelConfig.inputs`), its
    forward returns each branch's logits ({branch: B x TOTAL_CLASSES}, in `branches` order; a network may add
    auxiliary outputs under other keys), and what it deploys is P_FI, the branches' per-task probabilities
    averaged with weights searched on valid and saved with the weights (`branch_weights`)."""

    branches: tuple[str, ...] = BRANCHES

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        # equal until the branch-weight search sets them
        self.register_buffer("branch_weights", torch.full((len(self.branches),), 1.0 / len(self.branches)))

    @property
    def input_names(self) -> tuple[str, ...]:
        return self.cfg.inputs

    def fused_probabilities(self, *inputs: torch.Tensor) -> torch.Tensor:
        """P_FI, per-task probabilities concatenated (B x TOTAL_CLASSES): what exports output."""
        return fused_probabilities(self(*inputs), self.branch_weights, self.branches)

    def set_branch_weights(self, *weights: float) -> None:
        values = torch.tensor(weights, dtype=self.branch_weights.dtype)
        if len(values) != len(self.branches) or (values < 0).any() or abs(float(values.sum()) - 1.0) > 1e-6:
            raise ConfigError(f"branch weights must be {len(self.branches)} non-negative numbers that sum to 1 "
                              f"({', '.join(self.branches)}), got {values.tolist()}")
        self.branch_weights.copy_(values)
