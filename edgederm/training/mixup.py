"""Mixup and CutMix across the photo pair: one draw per batch, shared by both photos of every case.

Mixup (Zhang et al. 2018) blends a batch with a partner batch, x = lam x_a + (1 - lam) x_b; CutMix (Yun et
al. 2019) pastes a box of the partner into each image instead. The loss follows the mixture:
lam CE(y_a) + (1 - lam) CE(y_b) for every task of every branch (`edgederm.training.loss.mixed_multitask_loss`).
As in timm's `Mixup` (batch mode), the partner of case i is case N-1-i (the batch mixed with its reverse),
lam ~ Beta(alpha, alpha), a batch is mixed at all with probability `mix_prob`, and with both methods on
each batch takes one of them with probability 0.5 (timm's switch_prob 0.5).

Why one draw for the pair: the clinical and the dermoscopy photo of a case show the same lesion, and the
network fuses them into one prediction. Both photos of a mixed case must therefore show the same mixture of
the same two lesions: the same partner, the same lam and, for CutMix, the same box (in relative
coordinates, at the same place in both photos). Mixing each photo with a different partner or weight would
fuse a clinical view of one mixture with a dermoscopic view of another and teach a label that belongs to
neither.

The metadata input of jif-mmfa (a one-hot vector, no spatial layout) is mixed with the same lam as the
photos: for CutMix the lam corrected for the box's area, the share of the image that is the case's own.
Left unmixed, it would tell the network "case a" while the target says lam of a and 1 - lam of b, and
the metadata branch, which sees nothing else, would be trained on label noise; mixed, every input of the
virtual case agrees with its label.

Randomness: every draw comes from the `torch.Generator` the trainer reseeds each epoch from
(seed, epoch, rank), through a NumPy generator seeded from it per batch (as the augmentation does), so a run
is repeatable and a resumed run draws what the uninterrupted one drew; the augmentation's draws are the
same with mixing on or off. timm's own box helpers (`timm.data.mixup.rand_bbox`, `cutmix_bbox_and_lam`)
draw from NumPy's global random state, which neither the reseeding nor a checkpoint covers; `cutmix_box`
is their geometry (a square-ratio box of side sqrt(1 - lam), centred uniformly, clipped at the border,
lam corrected to the pasted area) drawn from that generator instead (tests/test_recipe_knobs.py checks it
against timm's).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

SWITCH_PROB = 0.5      # with mixup and CutMix both on: the chance a mixed batch uses CutMix (timm's default)


@dataclass(frozen=True)
class MixDraw:
    """One batch's draw. `lam`: the weight of each case's own image (and targets) in the mixture, 1.0 when
    the batch is left unmixed; for CutMix already corrected for the box's area. `box`: CutMix's pasted box as
    fractions of the image's height and width (top, bottom, left, right), None for mixup."""
    lam: float = 1.0
    box: tuple[float, float, float, float] | None = None

    @property
    def mixed(self) -> bool:
        return self.lam < 1.0


NO_MIX = MixDraw()


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator
               ) -> tuple[tuple[int, int, int, int], float]:
    """((top, bottom, left, right) in pixels, lam corrected to the box's area): timm's `rand_bbox` and
    `cutmix_bbox_and_lam` (correct_lam=True, no min-max ratio, no margin), drawn from `rng`."""
    ratio = np.sqrt(1 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    top, bottom = int(np.clip(cy - cut_h // 2, 0, height)), int(np.clip(cy + (cut_h + 1) // 2, 0, height))
    left, right = int(np.clip(cx - cut_w // 2, 0, width)), int(np.clip(cx + (cut_w + 1) // 2, 0, width))
    return (top, bottom, left, right), 1.0 - (bottom - top) * (right - left) / float(height * width)


def draw_mix(mixup_alpha: float, cutmix_alpha: float, mix_prob: float, height: int, width: int,
             generator: torch.Generator) -> MixDraw:
    """One batch's draw for images of `height` x `width`: unmixed with probability 1 - mix_prob; otherwise
    mixup or CutMix (both on: CutMix with probability SWITCH_PROB), lam ~ Beta(alpha, alpha)."""
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return NO_MIX
    rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (), generator=generator)))
    if rng.random() >= mix_prob:
        return NO_MIX
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < SWITCH_PROB)
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    lam = float(rng.beta(alpha, alpha))
    if not use_cutmix:
        return MixDraw(lam)
    (top, bottom, left, right), lam = cutmix_box(height, width, lam, rng)
    return MixDraw(lam, (top / height, bottom / height, left / width, right / width))


def _pixels(fraction: float, size: int) -> int:
    return int(round(fraction * size))


def partner(batch: torch.Tensor) -> torch.Tensor:
    """Each case's partner in the mixture: the batch reversed (case i with case N-1-i), as timm pairs them."""
    return batch.flip(0)


def mix_inputs(inputs: Sequence[torch.Tensor], draw: MixDraw) -> list[torch.Tensor]:
    """The batch's model inputs mixed with their partners by one draw: every photo (N x C x H x W) by the same
    lam, or the same box, and any other input (jif-mmfa's N x METADATA_SIZE metadata) by lam. The inputs are
    not changed in place."""
    if not draw.mixed:
        return list(inputs)
    mixed = []
    for x in inputs:
        if draw.box is not None and x.dim() == 4:
            height, width = x.shape[-2:]
            top, bottom, left, right = draw.box
            rows = slice(_pixels(top, height), _pixels(bottom, height))
            cols = slice(_pixels(left, width), _pixels(right, width))
            x = x.clone()
            x[..., rows, cols] = partner(x)[..., rows, cols]
        else:
            x = torch.lerp(partner(x), x, draw.lam)        # lam x + (1 - lam) partner
        mixed.append(x)
    return mixed


class BatchMixer:
    """One epoch's mixing: each call draws a batch's mixture from the epoch's generator and mixes the batch's
    inputs (the photos set the box's size; every model has at least one)."""

    def __init__(self, mixup_alpha: float, cutmix_alpha: float, mix_prob: float, generator: torch.Generator):
        self.mixup_alpha, self.cutmix_alpha, self.mix_prob = mixup_alpha, cutmix_alpha, mix_prob
        self.generator = generator

    def __call__(self, inputs: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], MixDraw]:
        height, width = next(x for x in inputs if x.dim() == 4).shape[-2:]
        draw = draw_mix(self.mixup_alpha, self.cutmix_alpha, self.mix_prob, height, width, self.generator)
        return mix_inputs(inputs, draw), draw
