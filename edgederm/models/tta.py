"""Test-time augmentation: the same model on flipped (and turned) views of both photos, the per-task
probabilities averaged.

    flip    the photos as they are, and mirrored left-right (a plain fine-tuning baseline's two views)
    flip4   those, mirrored top-bottom, and both
    six     flip4 and the two quarter turns (FusionM4Net's six views; `evaluate --tta`)

A view applies to every photo of a case alike; the patient metadata (jif-mmfa) is the same in every view.
`tta_probabilities` runs all views as one batch (one model call), so an exported graph with views built
in is still one call for every runtime and the clinic app; `edgederm export --tta` builds `flip` or
`flip4` into the bundle (a quarter turn needs a square input, which every preset has, but the two-view
and four-view sets are what the baseline and the bundle trade-off were measured with).

Averaging probabilities, not logits: P_FI is already a weighted average of per-task softmaxes, and the
average over views of that equals the weighted average of each branch's view-averaged softmax, which is
what `evaluate --tta` computes branch by branch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from edgederm.errors import ConfigError

if TYPE_CHECKING:
    import torch

# torch is imported where views are computed: the view sets are read by modules that run without it
NO_TTA: tuple[str, ...] = ("identity",)     # the photos as they are
VIEW_SETS: dict[str, tuple[str, ...]] = {
    "flip": ("identity", "hflip"),
    "flip4": ("identity", "hflip", "vflip", "hvflip"),
    "six": ("identity", "hflip", "vflip", "hvflip", "rot90", "rot270"),
}
EXPORT_VIEW_SETS = ("flip", "flip4")      # what `edgederm export --tta` builds into a bundle


def view(name: str, x: torch.Tensor) -> torch.Tensor:
    """One view of an N x C x H x W batch."""
    import torch
    if name == "identity":
        return x
    if name == "hflip":
        return torch.flip(x, dims=[3])
    if name == "vflip":
        return torch.flip(x, dims=[2])
    if name == "hvflip":
        return torch.flip(x, dims=[2, 3])
    if name == "rot90":
        return torch.rot90(x, 1, dims=[2, 3])
    if name == "rot270":
        return torch.rot90(x, 3, dims=[2, 3])
    raise ValueError(f"unknown view {name!r}")


def views_of(name: str, allowed: tuple[str, ...] = tuple(VIEW_SETS), what: str = "--tta") -> tuple[str, ...]:
    """The views of a named set; an unknown name is a one-line error naming the allowed ones (`what`: where the
    name was given)."""
    if name not in allowed:
        raise ConfigError(f"{what} {name!r}: not one of {', '.join(allowed)}")
    return VIEW_SETS[name]


def tta_views(tta: bool | str | None) -> tuple[str, ...]:
    """The views of `tta`: False or None -> the photos as they are; True -> the six views; a name -> its set."""
    if tta is False or tta is None:
        return NO_TTA
    return VIEW_SETS["six"] if tta is True else views_of(tta)


def tta_probabilities(model, inputs: tuple[torch.Tensor, ...], views: tuple[str, ...]) -> torch.Tensor:
    """P_FI averaged over `views` (B x TOTAL_CLASSES): every view stacked on the batch axis, one model call."""
    import torch
    if len(views) <= 1:
        return model.fused_probabilities(*inputs)
    n = inputs[0].shape[0]
    batched = [torch.cat([view(v, x) for v in views]) if x.dim() == 4 else x.repeat(len(views), 1)
               for x in inputs]
    return model.fused_probabilities(*batched).reshape(len(views), n, -1).mean(0)
