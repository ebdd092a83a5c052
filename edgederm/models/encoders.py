"""timm feature-pyramid encoders, one per modality.

Any timm model that supports `features_only` works. The encoder publishes
timm's `feature_info` (channels and reduction per stage), from which the
fusion blocks are built; outputs are always NCHW (timm's Swin gives NHWC).

Pretrained weights come only from a local file, loaded by timm's own loader
(`pretrained_cfg_overlay=dict(file=...)`, safetensors or a weights-only
torch.load): nothing is ever downloaded.
"""
from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from edgederm.errors import ConfigError, PretrainedError


class FeatureEncoder(nn.Module):
    """A timm `features_only` model whose outputs are NCHW feature maps."""

    def __init__(self, name: str, img_size: int, pretrained_file: str | Path | None = None):
        super().__init__()
        if not timm.is_model(name):
            raise ConfigError(f"encoder {name!r} is not a timm model name")
        kwargs: dict = {"features_only": True}
        cfg = timm.get_pretrained_cfg(name)
        if cfg is not None and cfg.fixed_input_size:   # transformers are built for one input size
            kwargs["img_size"] = img_size
        if pretrained_file is not None:
            path = Path(pretrained_file)
            if not path.is_file():
                raise PretrainedError(f"{path}: pretrained weights for {name} not found")
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
        try:
            self.body = timm.create_model(name, **kwargs)
        except RuntimeError as e:   # key or shape mismatch from a strict load_state_dict
            first = str(e).strip().splitlines()
            raise PretrainedError(f"{pretrained_file}: weights do not fit {name}: "
                                  f"{' '.join(first[:2])[:300]}") from None
        except (ValueError, KeyError, OSError) as e:
            if pretrained_file is None:
                raise
            raise PretrainedError(f"{pretrained_file}: cannot load as weights for {name} ({e})") from None
        self.name = name
        fmt = getattr(self.body, "output_fmt", "NCHW")
        self.channels_last_output = getattr(fmt, "value", fmt) == "NHWC"
        self.channels: list[int] = self.body.feature_info.channels()
        self.reductions: list[int] = self.body.feature_info.reduction()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.body(x)
        if self.channels_last_output:
            features = [f.permute(0, 3, 1, 2) for f in features]
        return list(features)
