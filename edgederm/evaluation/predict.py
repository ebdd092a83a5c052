"""Per-branch probabilities of a model over a data loader, optionally with
test-time augmentation (`edgederm.models.tta`): by default the six views of
FusionM4Net (original, three flips, two 90-degree rotations), or a named
view set (`flip`, `flip4`: what `export --tta` builds into a bundle); the
same view applied to both photos, probabilities averaged after the per-task
softmax."""
from __future__ import annotations

import numpy as np
import torch

from edgederm import labels as L
from edgederm.models.heads import task_softmax
from edgederm.models.tta import tta_views, view


@torch.no_grad()
def predict_branches(model: torch.nn.Module, loader, device: torch.device | str = "cpu",
                     tta: bool | str = False, progress=None,
                     location: dict | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({branch: N x 24 probabilities}, N x 8 labels), branches in the model's order. The model is put in
    eval mode. For a model with the body-location task, pass a dict as `location`: it receives
    "probabilities" (N x 9) and "labels" (N)."""
    model.eval()
    views = tta_views(tta)
    outputs: dict[str, list[np.ndarray]] = {b: [] for b in model.branches}
    located: list[np.ndarray] = []
    targets = []
    for *inputs, labels in (progress(loader) if progress else loader):
        inputs = [x.to(device) for x in inputs]
        summed = {b: 0.0 for b in model.branches}
        where = 0.0
        for name in views:
            logits = model(*(view(name, x) if x.dim() == 4 else x for x in inputs))
            for b in model.branches:
                summed[b] = summed[b] + task_softmax(logits[b].float())
            if "location" in logits:
                where = where + logits["location"].float().softmax(dim=1)
        for b in model.branches:
            outputs[b].append((summed[b] / len(views)).cpu().numpy())
        if "location" in logits:
            located.append((where / len(views)).cpu().numpy())
        targets.append(labels.numpy())
    targets = np.concatenate(targets)
    if location is not None and located:
        location.update(probabilities=np.concatenate(located), labels=targets[:, L.NUM_TASKS])
    return {b: np.concatenate(v) for b, v in outputs.items()}, targets[:, :L.NUM_TASKS]
