"""The two-encoder multi-modal network of "Pay Less On Clinical Images"
(Tang & Lasser, 2024), with the paper's baselines selectable by config.

    clinical photo -> clinical encoder (light, e.g. MobileNetV3) -> pooled features -> head P_C
    dermoscopy     -> dermoscopy encoder (heavy, e.g. Swin-T)    -> pooled features -> head P_D
    at each configured dermoscopy stage: align the clinical map, fuse (AAB / BAB / CAT)
    pooled fused maps of all fusion stages, concatenated          -> head P_FU
        (what P_FU reads is `fusion_features`: the fused maps, or with both
         encoders' pooled features beside them, or those alone, or the last
         fused map through the dermoscopy encoder's own conv head)
    test time: P_FI = W_C P_C + W_D P_D + W_FU P_FU

The single-shared network (`ssn` preset, arXiv 2403.19203) is the same net with
`shared_encoder`: one encoder runs on both photos (stacked on the batch axis,
one pass), its heads stay per modality, and the fusion is `sca`, one
cross-attention for every stage (edgederm.models.attention).

The fusion branch runs beside the encoders rather than feeding refined maps
back into the dermoscopy encoder: P_C and P_D stay true single-modality
branches (so the weighted average mixes three different views), and any timm
encoder with `forward_intermediates` works unmodified. The pooled features of
P_C and P_D are each encoder's pre-logits representation by default
(`branch_features`, see `edgederm.models.encoders`).

Why the fusion head may read the pre-logits features too: on the real
release the fusion head that read only the pooled fused maps (320 channels
at EfficientNet-Lite1's last stage, before its 1x1 conv head) scored below
the dermoscopy branch alone; with both encoders' 1280-channel pre-logits
features beside them it gained 1.4 test AUC points (docs/model.md, "What the
fusion head reads").
"""
from __future__ import annotations

import torch
from torch import nn

from edgederm.errors import ConfigError
from edgederm.models.attention import SharedCrossAttention
from edgederm.models.config import ModelConfig
from edgederm.models.encoders import FeatureEncoder
from edgederm.models.fusion import StageFusion, match_stage
from edgederm.models.heads import BranchNet, MultiTaskHead


class MultiModalNet(BranchNet):
    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        if not cfg.shared_encoder:     # shared: `clinical_encoder` below is the dermoscopy encoder itself
            self.clinical_encoder = FeatureEncoder(cfg.clinical_encoder, cfg.img_size, cfg.branch_features)
        self.derm_encoder = FeatureEncoder(cfg.derm_encoder, cfg.img_size, cfg.branch_features)
        # built in this order (fusion blocks, then heads) so a seed initialises `fused` models as before 0.3
        self.fusion_stages: list[int] = []       # none when the fusion head reads only the pooled features
        fused_channels = self._build_fusion(cfg) if cfg.fusion_features != "pre_logits" else []
        if cfg.fusion_features == "fused_head":   # the last fused map leaves the encoder's head at its width
            fused_channels[-1] = self.derm_encoder.pooled_channels
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.clinical_head = MultiTaskHead(self.clinical_encoder.pooled_channels, cfg.drop_rate)
        self.derm_head = MultiTaskHead(self.derm_encoder.pooled_channels, cfg.drop_rate)
        pooled = ([self.clinical_encoder.pooled_channels, self.derm_encoder.pooled_channels]
                  if "pre_logits" in cfg.fusion_features else [])
        self.fusion_head = MultiTaskHead(sum(fused_channels) + sum(pooled), cfg.drop_rate)

    def _build_fusion(self, cfg: ModelConfig) -> list[int]:
        """The fusion blocks at the configured stages; returns each fused map's channels."""
        n_stages = len(self.derm_encoder.channels)
        stages = []
        for s in cfg.fusion_stages:
            if not -n_stages <= s < n_stages:
                raise ConfigError(f"model config: fusion stage {s} does not exist; {cfg.derm_encoder} "
                                  f"has stages 0..{n_stages - 1} (or -{n_stages}..-1)")
            stages.append(s % n_stages)
        if len(set(stages)) != len(stages):
            raise ConfigError(f"model config: fusion_stages {list(cfg.fusion_stages)} name a stage twice")
        self.fusion_stages = sorted(stages)
        if cfg.fusion_features == "fused_head":
            if not self.derm_encoder.has_conv_head:
                raise ConfigError(f"model config: fusion_features 'fused_head' does not apply to {cfg.derm_encoder}: "
                                  "it has no conv head after its last stage (allowed here: fused, "
                                  "fused+pre_logits, pre_logits)")
            if self.fusion_stages[-1] != n_stages - 1:
                raise ConfigError("model config: fusion_features 'fused_head' needs a fusion block at the last "
                                  f"stage (-1); fusion_stages is {list(cfg.fusion_stages)}")
        self.clinical_stages = [match_stage(self.derm_encoder.reductions[s], self.clinical_encoder.reductions)
                                for s in self.fusion_stages]
        clinical_channels = [self.clinical_encoder.channels[c] for c in self.clinical_stages]
        derm_channels = [self.derm_encoder.channels[s] for s in self.fusion_stages]
        if cfg.fusion == "sca":        # one module for every stage
            self.fusions = SharedCrossAttention(clinical_channels, derm_channels, cfg.key_ratio, cfg.attention_scale)
            return list(self.fusions.out_channels)
        self.fusions = nn.ModuleList(StageFusion(cfg.fusion, c, d, cfg.key_ratio, cfg.attention_scale)
                                     for c, d in zip(clinical_channels, derm_channels))
        return [f.out_channels for f in self.fusions]

    @property
    def clinical_encoder(self) -> FeatureEncoder:
        # A property, so a shared encoder is registered (and saved) once; nn.Module stores a separate
        # clinical encoder in _modules, where this finds it.
        return self.derm_encoder if self.cfg.shared_encoder else self._modules["clinical_encoder"]

    def encoders(self) -> list[FeatureEncoder]:
        """The distinct encoders (one when shared)."""
        return [self.derm_encoder] if self.cfg.shared_encoder else [self.clinical_encoder, self.derm_encoder]

    def forward(self, clinical: torch.Tensor, derm: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of each branch, {"clinical", "derm", "fusion"} -> B x TOTAL_CLASSES."""
        if self.cfg.shared_encoder:    # both photos in one pass; BatchNorm sees both (a CNN's price for sharing)
            feats, pooled = self.derm_encoder(torch.cat([clinical, derm]))
            n = clinical.shape[0]
            c_feats, d_feats = [f[:n] for f in feats], [f[n:] for f in feats]
            c_pooled, d_pooled = pooled[:n], pooled[n:]
        else:
            c_feats, c_pooled = self.clinical_encoder(clinical)
            d_feats, d_pooled = self.derm_encoder(derm)
        return {
            "clinical": self.clinical_head(c_pooled),
            "derm": self.derm_head(d_pooled),
            "fusion": self.fusion_head(torch.cat(self._fusion_features(c_feats, d_feats, c_pooled, d_pooled), dim=1)),
        }

    def _fusion_features(self, c_feats, d_feats, c_pooled, d_pooled) -> list[torch.Tensor]:
        """What the fusion head reads (`fusion_features`), as B x n vectors to concatenate."""
        features = []
        if self.fusion_stages:
            pairs = [(c_feats[c], d_feats[s]) for s, c in zip(self.fusion_stages, self.clinical_stages)]
            fused = (self.fusions(pairs) if isinstance(self.fusions, SharedCrossAttention)
                     else [fusion(c, d) for fusion, (c, d) in zip(self.fusions, pairs)])
            features = [self.pool(f) for f in fused]
            if self.cfg.fusion_features == "fused_head":
                features[-1] = self.derm_encoder.head(fused[-1])
        if "pre_logits" in self.cfg.fusion_features:
            features += [c_pooled, d_pooled]
        return features
