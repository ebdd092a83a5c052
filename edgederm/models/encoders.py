"""timm feature-pyramid encoders, one per modality.

Any timm model that supports `features_only` works. The encoder publishes
timm's `feature_info` (channels and reduction per stage), from which the
fusion blocks are built; outputs are always NCHW (timm's Swin gives NHWC).

Weights start random here; `edgederm.models.pretrained` loads offline
ImageNet weights into an encoder and proves the load.
"""
from __future__ import annotations

import timm
import torch
from torch import nn

from edgederm.errors import ConfigError


class FeatureEncoder(nn.Module):
    """A timm `features_only` model whose outputs are NCHW feature maps."""

    def __init__(self, name: str, img_size: int):
        super().__init__()
        if not timm.is_model(name):
            raise ConfigError(f"encoder {name!r} is not a timm model name")
        cfg = timm.get_pretrained_cfg(name)
        # transformers are built for one input size
        self.model_kwargs = {"img_size": img_size} if cfg is not None and cfg.fixed_input_size else {}
        self.body = timm.create_model(name, features_only=True, **self.model_kwargs)
        self.name, self.img_size = name, img_size
        fmt = getattr(self.body, "output_fmt", "NCHW")
        self.channels_last_output = getattr(fmt, "value", fmt) == "NHWC"
        self.channels: list[int] = self.body.feature_info.channels()
        self.reductions: list[int] = self.body.feature_info.reduction()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.body(x)
        if self.channels_last_output:
            features = [f.permute(0, 3, 1, 2) for f in features]
        return list(features)
