"""Attention fusion blocks of "Pay Less On Clinical Images" (Tang & Lasser, 2024).

Asymmetric attention block (AAB): clinical features steer, dermoscopy features
are refined, clinical features are never refined. With C and D of shape
B x Ch x H x W and N = H * W:

    C_k, C_q = conv1x1(C), conv1x1(C)          (B x N x Ck each)
    D_v      = conv1x1(D)                      (B x N x Ch)
    M_c      = softmax(C_k C_q^T)              (B x N x N, each row sums to 1)
    D'       = M_c D_v + D

We read the paper's "D_v . M_c" in this N x Ch layout, so every refined
position is a convex combination of dermoscopy values chosen by clinical
similarity. The paper's softmax is unscaled and its C_k, C_q have Ch
channels (`attention_scale=False`, `key_ratio=1`: the `paper` preset).
EdgeDerm's own presets narrow the keys to Ch / 8 and scale the logits by
1 / sqrt(Ck), as transformers do, so the softmax does not saturate at the
start of training (`attention_scale=True`, `key_ratio=8`). The product runs
through `scaled_dot_product_attention`, which is that formula,
memory-efficient.

Bidirectional attention block (BAB): the paper's baseline, He et al. (2023)'s
co-attention, which the paper describes only as refining both modalities.
One affinity between clinical keys and dermoscopy queries is read both
ways: each dermoscopy position gathers clinical values, each clinical
position dermoscopy values, and both refined maps are kept:

    S  = C_k D_q^T                             (B x N x N)
    D' = softmax_rows(S^T) C_v + D,   C' = softmax_rows(S) D_v + C

Four 1x1 convs (4 Ch^2 at Ck = Ch) against AAB's three: the paper's counts
put BAB 0.82 M above AAB at Swin-T's 768-channel stage, which fits 4 Ch^2
(+0.59 M) and not two independent AABs (6 Ch^2, +1.77 M).

Shared cross-attention (SCA), of the single-shared network (Tang & Lasser,
arXiv 2403.19203; `ssn` preset): one set of key, query and value weights
serves every fused stage and both directions. The paper gives no shapes
(not stated in arXiv 2403.19203); EdgeDerm's reading: each stage's
two maps are projected to one common width W (a 1x1 conv + BN + ReLU per
stage and modality, the narrowest fused stage's channels), then

    D' = softmax(q(D) k(C)^T / sqrt(Ck)) v(C) + D,   C' = softmax(q(C) k(D)^T / sqrt(Ck)) v(D) + C

and the stage's fused map is concat(C', D') (2 W channels).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AsymmetricAttentionBlock(nn.Module):
    """Refines `target` features with an attention map computed from `steer` features."""

    def __init__(self, channels: int, key_channels: int, scale: bool = True):
        super().__init__()
        self.key = nn.Conv2d(channels, key_channels, 1)
        self.query = nn.Conv2d(channels, key_channels, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.out_channels = channels
        self.scale = None if scale else 1.0       # None: SDPA's 1 / sqrt(Ck)

    def forward(self, steer: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        b, c, h, w = target.shape
        k = self.key(steer).flatten(2).transpose(1, 2)        # B x N x Ck   (rows of M_c)
        q = self.query(steer).flatten(2).transpose(1, 2)      # B x N x Ck   (columns of M_c)
        v = self.value(target).flatten(2).transpose(1, 2)     # B x N x C
        refined = F.scaled_dot_product_attention(k, q, v, scale=self.scale)   # softmax(k q^T [/ sqrt(Ck)]) v
        return refined.transpose(1, 2).reshape(b, c, h, w) + target


class AsymmetricFusion(nn.Module):
    """AAB as a fusion block: the fused map is the refined dermoscopy map."""

    def __init__(self, channels: int, key_channels: int, scale: bool = True):
        super().__init__()
        self.attend = AsymmetricAttentionBlock(channels, key_channels, scale)
        self.out_channels = channels

    def forward(self, clinical: torch.Tensor, derm: torch.Tensor) -> torch.Tensor:
        return self.attend(steer=clinical, target=derm)


class BidirectionalFusion(nn.Module):
    """BAB (co-attention): one clinical-dermoscopy affinity refines each modality with the other's values."""

    def __init__(self, channels: int, key_channels: int, scale: bool = True):
        super().__init__()
        self.clinical_key = nn.Conv2d(channels, key_channels, 1)
        self.derm_query = nn.Conv2d(channels, key_channels, 1)
        self.clinical_value = nn.Conv2d(channels, channels, 1)
        self.derm_value = nn.Conv2d(channels, channels, 1)
        self.out_channels = 2 * channels
        self.scale = None if scale else 1.0

    def forward(self, clinical: torch.Tensor, derm: torch.Tensor) -> torch.Tensor:
        b, c, h, w = derm.shape
        tokens = lambda x: x.flatten(2).transpose(1, 2)                   # noqa: E731  B x C x H x W -> B x N x C
        k, q = tokens(self.clinical_key(clinical)), tokens(self.derm_query(derm))
        derm_refined = F.scaled_dot_product_attention(q, k, tokens(self.clinical_value(clinical)), scale=self.scale)
        clinical_refined = F.scaled_dot_product_attention(k, q, tokens(self.derm_value(derm)), scale=self.scale)
        spatial = lambda x: x.transpose(1, 2).reshape(b, c, h, w)           # noqa: E731
        return torch.cat([spatial(clinical_refined) + clinical, spatial(derm_refined) + derm], dim=1)


class SharedCrossAttention(nn.Module):
    """SCA: one key / query / value set for every fused stage and both directions (module docstring)."""

    def __init__(self, clinical_channels: list[int], derm_channels: list[int], key_ratio: int, scale: bool = True):
        super().__init__()
        width = min(derm_channels)
        project = lambda c: nn.Sequential(nn.Conv2d(c, width, 1, bias=False), nn.BatchNorm2d(width),  # noqa: E731
                                          nn.ReLU(inplace=True))
        self.clinical_in = nn.ModuleList(project(c) for c in clinical_channels)
        self.derm_in = nn.ModuleList(project(c) for c in derm_channels)
        key_channels = max(8, width // key_ratio)
        self.key = nn.Conv2d(width, key_channels, 1)
        self.query = nn.Conv2d(width, key_channels, 1)
        self.value = nn.Conv2d(width, width, 1)
        self.out_channels = [2 * width] * len(derm_channels)
        self.scale = None if scale else 1.0

    def _attend(self, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """`target` refined with `source`'s values where `target`'s queries meet `source`'s keys."""
        b, c, h, w = target.shape
        tokens = lambda x: x.flatten(2).transpose(1, 2)                   # noqa: E731
        refined = F.scaled_dot_product_attention(tokens(self.query(target)), tokens(self.key(source)),
                                                 tokens(self.value(source)), scale=self.scale)
        return refined.transpose(1, 2).reshape(b, c, h, w) + target

    def forward(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        """[(clinical map, dermoscopy map)] per fused stage -> the fused maps."""
        fused = []
        for clinical_in, derm_in, (clinical, derm) in zip(self.clinical_in, self.derm_in, pairs):
            d = derm_in(derm)
            c = clinical_in(clinical)
            if tuple(c.shape[-2:]) != tuple(d.shape[-2:]):
                c = F.interpolate(c, size=d.shape[-2:], mode="bilinear", align_corners=False)
            fused.append(torch.cat([self._attend(c, d), self._attend(d, c)], dim=1))
        return fused
