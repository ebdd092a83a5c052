"""Attention fusion blocks of "Pay Less On Clinical Images" (Tang & Lasser, 2024).

Asymmetric attention block (AAB): clinical features steer, dermoscopy features
are refined, clinical features are never refined. With C and D of shape
B x Ch x H x W and N = H * W:

    C_k, C_q = conv1x1(C), conv1x1(C)          (B x N x Ck each)
    D_v      = conv1x1(D)                      (B x N x Ch)
    M_c      = softmax(C_k C_q^T / sqrt(Ck))   (B x N x N, each row sums to 1)
    D'       = M_c D_v + D

We read the paper's "D_v . M_c" in this N x Ch layout, so every refined
position is a convex combination of dermoscopy values chosen by clinical
similarity. The softmax is scaled by 1/sqrt(Ck) (the paper allows either) to
keep it from saturating at Swin's channel widths; the product runs through
`scaled_dot_product_attention`, which is that formula, memory-efficient.

Bidirectional attention block (BAB): the paper's baseline, where each
modality refines the other with its own attention map.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AsymmetricAttentionBlock(nn.Module):
    """Refines `target` features with an attention map computed from `steer` features."""

    def __init__(self, channels: int, key_channels: int):
        super().__init__()
        self.key = nn.Conv2d(channels, key_channels, 1)
        self.query = nn.Conv2d(channels, key_channels, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.out_channels = channels

    def forward(self, steer: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        b, c, h, w = target.shape
        k = self.key(steer).flatten(2).transpose(1, 2)        # B x N x Ck   (rows of M_c)
        q = self.query(steer).flatten(2).transpose(1, 2)      # B x N x Ck   (columns of M_c)
        v = self.value(target).flatten(2).transpose(1, 2)     # B x N x C
        refined = F.scaled_dot_product_attention(k, q, v)     # softmax(k q^T / sqrt(Ck)) v
        return refined.transpose(1, 2).reshape(b, c, h, w) + target


class AsymmetricFusion(nn.Module):
    """AAB as a fusion block: the fused map is the refined dermoscopy map."""

    def __init__(self, channels: int, key_channels: int):
        super().__init__()
        self.attend = AsymmetricAttentionBlock(channels, key_channels)
        self.out_channels = channels

    def forward(self, clinical: torch.Tensor, derm: torch.Tensor) -> torch.Tensor:
        return self.attend(steer=clinical, target=derm)


class BidirectionalFusion(nn.Module):
    """BAB: clinical refines dermoscopy and dermoscopy refines clinical; both are kept."""

    def __init__(self, channels: int, key_channels: int):
        super().__init__()
        self.refine_derm = AsymmetricAttentionBlock(channels, key_channels)
        self.refine_clinical = AsymmetricAttentionBlock(channels, key_channels)
        self.out_channels = 2 * channels

    def forward(self, clinical: torch.Tensor, derm: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.refine_clinical(steer=derm, target=clinical),
                          self.refine_derm(steer=clinical, target=derm)], dim=1)
