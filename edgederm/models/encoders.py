"""timm encoders, one per modality: the whole pretrained model, seen two ways.

    stage maps        timm's `forward_intermediates`: one NCHW map per
                      `feature_info` stage, for the fusion blocks
    pooled features   what each single-modality head reads (`branch_features`):
      pre_logits      `forward_head(final, pre_logits=True)`: the representation
                      the encoder was pretrained to produce, conv head included
                      (EfficientNet-Lite1: 320 -> 1280 channels; MobileNetV3:
                      960 -> 1280 after pooling; Swin: the final LayerNorm)
      last_stage      the last stage map, average-pooled; the model's head
                      layers are pruned (`prune_intermediate_layers`), which
                      is what timm's `features_only` builds and what EdgeDerm
                      did before the head was kept

Why the whole model: on the real release, heads on the pre-logits
representation beat heads on the last stage map by about 4 test AUC points
with the same encoders and ImageNet weights (docs/model.md, "Branch features").

`head(map)` runs the encoder's own layers after its last stage (conv head,
BN, activation, pooling) on another map of the last stage's shape: the fusion
head's `fused_head` input puts the last fused map through the very weights
P_D uses.

Weights start random here; `edgederm.models.pretrained` loads offline
ImageNet weights into an encoder and proves the load.
"""
from __future__ import annotations

import timm
import torch
from timm.models import EfficientNet, MobileNetV3
from torch import nn

from edgederm.errors import ConfigError
from edgederm.models.config import BRANCH_FEATURES


class FeatureEncoder(nn.Module):
    """A timm model without its classifier: stage maps and pooled features."""

    def __init__(self, name: str, img_size: int, branch_features: str = "pre_logits"):
        super().__init__()
        if not timm.is_model(name):
            raise ConfigError(f"encoder {name!r} is not a timm model name")
        if branch_features not in BRANCH_FEATURES:
            raise ConfigError(f"branch_features {branch_features!r} is not one of {', '.join(BRANCH_FEATURES)}")
        cfg = timm.get_pretrained_cfg(name)
        # transformers are built for one input size
        self.model_kwargs = {"img_size": img_size} if cfg is not None and cfg.fixed_input_size else {}
        self.body = timm.create_model(name, num_classes=0, **self.model_kwargs)
        if not hasattr(self.body, "forward_intermediates"):
            raise ConfigError(f"encoder {name!r}: timm has no forward_intermediates for it, so its stage maps "
                              "cannot be taken")
        self.name, self.img_size, self.branch_features = name, img_size, branch_features
        info = self.body.feature_info
        self.channels: list[int] = [int(f["num_chs"]) for f in info]
        self.reductions: list[int] = [int(f["reduction"]) for f in info]
        if branch_features == "last_stage":
            # drop what follows the last stage (conv head, final norm), as features_only does
            self.body.prune_intermediate_layers(len(self.channels), prune_norm=True, prune_head=True)
            self.pooled_channels = self.channels[-1]
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        else:
            self.pooled_channels = int(getattr(self.body, "head_hidden_size", None) or self.body.num_features)

    @property
    def has_conv_head(self) -> bool:
        """Whether layers follow the last stage map that `head` can run: a conv head kept (pre_logits)."""
        return self.branch_features == "pre_logits" and isinstance(self.body, (EfficientNet, MobileNetV3))

    def head(self, stage_map: torch.Tensor) -> torch.Tensor:
        """A map shaped like the last stage's -> what the pooled features are made of it (B x pooled_channels)."""
        if not self.has_conv_head:
            raise ConfigError(f"encoder {self.name!r} has no conv head after its last stage")
        if isinstance(self.body, EfficientNet):      # its conv head sits in forward_features, after the blocks
            stage_map = self.body.bn2(self.body.conv_head(stage_map))
        return self.body.forward_head(stage_map, pre_logits=True)   # MobileNetV3: pool, then its conv head

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(stage maps, pooled features B x pooled_channels)."""
        if self.branch_features == "last_stage":
            stages = self.body.forward_intermediates(x, intermediates_only=True)
            return list(stages), self.pool(stages[-1])
        final, stages = self.body.forward_intermediates(x)
        return list(stages), self.body.forward_head(final, pre_logits=True)
