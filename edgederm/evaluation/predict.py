"""Per-branch probabilities of a model over a data loader, optionally with
test-time augmentation: six views (original, three flips, two 90-degree
rotations) as in FusionM4Net, the same view applied to both photos,
probabilities averaged after the per-task softmax."""
from __future__ import annotations

import numpy as np
import torch

from edgederm.models.heads import BRANCHES, task_softmax

TTA_VIEWS = (
    lambda x: x,
    lambda x: torch.flip(x, dims=[3]),
    lambda x: torch.flip(x, dims=[2]),
    lambda x: torch.flip(x, dims=[2, 3]),
    lambda x: torch.rot90(x, 1, dims=[2, 3]),
    lambda x: torch.rot90(x, 3, dims=[2, 3]),
)


@torch.no_grad()
def predict_branches(model: torch.nn.Module, loader, device: torch.device | str = "cpu",
                     tta: bool = False, progress=None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({branch: N x 24 probabilities}, N x 8 labels). The model is put in eval mode."""
    model.eval()
    views = TTA_VIEWS if tta else TTA_VIEWS[:1]
    outputs: dict[str, list[np.ndarray]] = {b: [] for b in BRANCHES}
    targets = []
    for clinical, derm, labels in (progress(loader) if progress else loader):
        clinical, derm = clinical.to(device), derm.to(device)
        summed = {b: 0.0 for b in BRANCHES}
        for view in views:
            logits = model(view(clinical), view(derm))
            for b in BRANCHES:
                summed[b] = summed[b] + task_softmax(logits[b].float())
        for b in BRANCHES:
            outputs[b].append((summed[b] / len(views)).cpu().numpy())
        targets.append(labels.numpy())
    return {b: np.concatenate(v) for b, v in outputs.items()}, np.concatenate(targets)


def weighted_final(branch_probs: dict[str, np.ndarray], weights) -> np.ndarray:
    """P_FI = W_C P_C + W_D P_D + W_FU P_FU, weights in BRANCHES order."""
    return sum(float(w) * branch_probs[b] for w, b in zip(weights, BRANCHES))
