"""L = w_C L_clinical + w_D L_derm + w_FU L_fusion, each the sum of the eight tasks' cross-entropies.
The weights are 1 but for the single-shared network's biased loss (TrainConfig.loss_weight_*).
The clinical-only network adds w_LOC L_location, its auxiliary body-location task.
Under mixup / CutMix (edgederm.training.mixup) each cross-entropy is lam CE(y_a) + (1 - lam) CE(y_b)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from edgederm import labels as L
from edgederm.models.heads import split_tasks


def class_weights_from_counts(labels: torch.Tensor) -> list[torch.Tensor]:
    """Inverse-frequency weights per task, N / (K * n_c), from N x 8 training labels.
    A class missing from the training split gets weight 1 (it contributes no loss anyway)."""
    weights = []
    for t, k in enumerate(L.NUM_CLASSES):
        counts = torch.bincount(labels[:, t], minlength=k).float()
        w = torch.where(counts > 0, len(labels) / (k * counts.clamp(min=1)), torch.ones_like(counts))
        weights.append(w)
    return weights


AUXILIARY = ("location",)    # outputs that are tasks of their own, not branches of the eight tasks


def multitask_loss(branch_logits: dict[str, torch.Tensor], targets: torch.Tensor,
                   class_weights: list[torch.Tensor] | None = None, label_smoothing: float = 0.0,
                   branch_weights: dict[str, float] | None = None, location_weight: float = 1.0) -> torch.Tensor:
    """`branch_logits`: a network's forward. `targets`: N x 8 task labels, plus the body-location index
    as a ninth column when the network outputs "location"."""
    total = 0.0
    for branch, logits in branch_logits.items():
        if branch in AUXILIARY:
            continue
        branch_total = 0.0
        for t, task_logits in enumerate(split_tasks(logits).values()):
            weight = class_weights[t].to(task_logits.device) if class_weights is not None else None
            branch_total = branch_total + F.cross_entropy(task_logits.float(), targets[:, t], weight=weight,
                                                          label_smoothing=label_smoothing)
        total = total + (1.0 if branch_weights is None else branch_weights[branch]) * branch_total
    if "location" in branch_logits:
        total = total + location_weight * F.cross_entropy(branch_logits["location"].float(), targets[:, L.NUM_TASKS],
                                                          label_smoothing=label_smoothing)
    return total


def mixed_multitask_loss(branch_logits: dict[str, torch.Tensor], targets: torch.Tensor,
                         partner_targets: torch.Tensor, lam: float,
                         class_weights: list[torch.Tensor] | None = None, label_smoothing: float = 0.0,
                         branch_weights: dict[str, float] | None = None, location_weight: float = 1.0) -> torch.Tensor:
    """The loss of a mixed batch (edgederm.training.mixup): lam x the loss against each case's own targets
    plus (1 - lam) x the loss against its partner's, for every task of every branch and the body-location
    task alike (every term of `multitask_loss` is linear in its cross-entropy). lam = 1: `multitask_loss`."""
    own = multitask_loss(branch_logits, targets, class_weights, label_smoothing, branch_weights, location_weight)
    if lam >= 1.0:
        return own
    theirs = multitask_loss(branch_logits, partner_targets, class_weights, label_smoothing, branch_weights,
                            location_weight)
    return lam * own + (1.0 - lam) * theirs
