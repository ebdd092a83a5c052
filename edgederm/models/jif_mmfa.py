"""The two photos plus patient metadata, after JIF-MMFA (Tang et al., Pattern
Recognition 2024, arXiv 2312.04189): joint-individual fusion with a
multi-modal fusion attention module.

    clinical photo -> clinical encoder -> pooled f_C --.
    dermoscopy     -> dermoscopy encoder -> pooled f_D -+-> [f_D | f_C] -> C_I  (image branch)
    metadata (14, one-hot) -> MLP -> f_M ---------------+-> C_M                  (metadata branch)
    MMFA: tokens [f_D, f_C, f_M], each projected to a common width, one
          multi-head attention in which every token is query, key and value
          (self and mutual attention), residual + LayerNorm; the three tokens
          concatenated -> C_IM                                        (joint branch)
          (`fusion_features`: `fused` is that; `fused+pre_logits` adds f_D and
          f_C beside the tokens; `pre_logits` is [f_D | f_C | f_M] without MMFA)
    test time: P_FI = W_I P_I + W_M P_M + W_IM P_IM (weights searched on valid)

What the paper gives and what EdgeDerm chose:
- The paper has one image; EdgeDerm's clinics take two photos, so the image
  modality is both pooled features and MMFA attends over three tokens, not
  two.
- Metadata: sex, location, elevation, one-hot (labels.METADATA_FIELDS, 14
  values). The paper's SPC fields are not stated; `management` and the
  diagnostic difficulty would give the answer away and are never read.
- MMFA width, heads and normalisation are not stated: width 128, 4 heads, a
  residual and a LayerNorm (our assumption). The metadata MLP's size
  is not stated either: two layers of 64.
- Loss L_IM + 0.5 (L_I + L_M): TrainConfig.loss_weight_image / _metadata of
  the jif-mmfa recipes (the paper's 0.5, as a secondary summary reports it).
- Decision-level averaging ("All"): the paper does not say how the three are
  weighed; EdgeDerm searches the weights on valid like every BranchNet.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgederm import labels as L
from edgederm.models.config import ModelConfig
from edgederm.models.encoders import FeatureEncoder
from edgederm.models.heads import BranchNet, MultiTaskHead

TOKEN_WIDTH = 128
HEADS = 4
METADATA_WIDTH = 64


class FusionAttention(nn.Module):
    """MMFA: every token attends to every token (its own modality and the others), residual + LayerNorm.
    Attention written out so every exporter sees plain MatMul / Softmax."""

    def __init__(self, in_features: list[int], width: int, heads: int):
        super().__init__()
        self.project = nn.ModuleList(nn.Sequential(nn.Linear(n, width), nn.LayerNorm(width)) for n in in_features)
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.out_features = width * len(in_features)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """One B x n_i vector per modality -> the attended tokens concatenated, B x (tokens * width)."""
        x = torch.stack([p(f) for p, f in zip(self.project, features)], dim=1)      # B x T x width
        b, t, w = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, w)
        return self.norm(x + self.out(attended)).flatten(1)


class JifMmfaNet(BranchNet):
    branches = ("image", "metadata", "fusion")

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.clinical_encoder = FeatureEncoder(cfg.clinical_encoder, cfg.img_size, cfg.branch_features)
        self.derm_encoder = FeatureEncoder(cfg.derm_encoder, cfg.img_size, cfg.branch_features)
        image_features = self.derm_encoder.pooled_channels + self.clinical_encoder.pooled_channels
        self.metadata_encoder = nn.Sequential(nn.Linear(L.METADATA_SIZE, METADATA_WIDTH), nn.ReLU(),
                                              nn.Linear(METADATA_WIDTH, METADATA_WIDTH), nn.ReLU())
        joint_features = 0
        if cfg.fusion_features != "pre_logits":
            self.fusions = FusionAttention([self.derm_encoder.pooled_channels, self.clinical_encoder.pooled_channels,
                                            METADATA_WIDTH], TOKEN_WIDTH, HEADS)
            joint_features = self.fusions.out_features
        if cfg.fusion_features == "fused+pre_logits":
            joint_features += image_features
        elif cfg.fusion_features == "pre_logits":
            joint_features = image_features + METADATA_WIDTH
        self.image_head = MultiTaskHead(image_features, cfg.drop_rate)
        self.metadata_head = MultiTaskHead(METADATA_WIDTH, cfg.drop_rate)
        self.fusion_head = MultiTaskHead(joint_features, cfg.drop_rate)

    def encoders(self) -> list[FeatureEncoder]:
        return [self.clinical_encoder, self.derm_encoder]

    def forward(self, clinical: torch.Tensor, derm: torch.Tensor, metadata: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of each branch, {"image", "metadata", "fusion"} -> B x TOTAL_CLASSES."""
        _, c_pooled = self.clinical_encoder(clinical)
        _, d_pooled = self.derm_encoder(derm)
        m = self.metadata_encoder(metadata)
        return {
            "image": self.image_head(torch.cat([d_pooled, c_pooled], dim=1)),
            "metadata": self.metadata_head(m),
            "fusion": self.fusion_head(torch.cat(self._joint_features(d_pooled, c_pooled, m), dim=1)),
        }

    def _joint_features(self, d_pooled, c_pooled, m) -> list[torch.Tensor]:
        """What the joint head reads (`fusion_features`): MMFA's tokens (`fused`), with both pooled image
        features beside them (`fused+pre_logits`), or the three features concatenated (`pre_logits`)."""
        if self.cfg.fusion_features == "pre_logits":
            return [d_pooled, c_pooled, m]
        tokens = self.fusions([d_pooled, c_pooled, m])
        return [tokens, d_pooled, c_pooled] if self.cfg.fusion_features == "fused+pre_logits" else [tokens]
