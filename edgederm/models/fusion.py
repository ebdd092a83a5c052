"""Fusion at one dermoscopy stage: align the clinical map, then fuse.

The clinical map of the stage with the same reduction (or the nearest) is
projected to the dermoscopy stage's channels by a 1x1 conv + BN + ReLU and
resized to its H x W; a fusion block (AAB, BAB or concatenation) then
combines the two.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgederm.models.attention import AsymmetricFusion, BidirectionalFusion


class ConcatFusion(nn.Module):
    """CAT baseline: concatenate channels, mix back with a 1x1 conv + BN + ReLU."""

    def __init__(self, channels: int, key_channels: int = 0, scale: bool = True):
        super().__init__()
        self.mix = nn.Sequential(nn.Conv2d(2 * channels, channels, 1, bias=False),
                                 nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        self.out_channels = channels

    def forward(self, clinical: torch.Tensor, derm: torch.Tensor) -> torch.Tensor:
        return self.mix(torch.cat([clinical, derm], dim=1))


FUSION_BLOCKS = {"aab": AsymmetricFusion, "bab": BidirectionalFusion, "cat": ConcatFusion}


class ClinicalProjection(nn.Module):
    """Clinical stage map -> the dermoscopy stage's channels and spatial size."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                  nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))

    def forward(self, clinical: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = self.proj(clinical)
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x


class StageFusion(nn.Module):
    def __init__(self, fusion: str, clinical_channels: int, derm_channels: int, key_ratio: int,
                 attention_scale: bool = True):
        super().__init__()
        self.align = ClinicalProjection(clinical_channels, derm_channels)
        self.block = FUSION_BLOCKS[fusion](derm_channels, max(8, derm_channels // key_ratio), attention_scale)
        self.out_channels = self.block.out_channels

    def forward(self, clinical: torch.Tensor, derm: torch.Tensor) -> torch.Tensor:
        return self.block(self.align(clinical, derm.shape[-2:]), derm)


def match_stage(derm_reduction: int, clinical_reductions: list[int]) -> int:
    """Index of the clinical stage whose reduction is closest (ties: the deeper one)."""
    return min(range(len(clinical_reductions)),
               key=lambda i: (abs(clinical_reductions[i] - derm_reduction), -i))
