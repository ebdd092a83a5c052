"""A clinical-photo-only multi-task network after DermImitFormer (Zhou et al.,
MICCAI 2023, arXiv 2307.08308), for clinics without a dermatoscope.

    clinical photo -> encoder -> pooled features (global) ---------------------.
                              -> last stage map -> patch tokens                 |
                                 lesion selection: the K patches the task       |
                                 queries attend to most (local)                 |
    task tokens (8 derm7pt tasks + body location) attend to [global, K patches] |
    each task's classifier reads [global | local | its task token]  <-----------'

What the paper gives and what EdgeDerm chose:
- Lesion selection (LSM): the paper scores ViT patch tokens by the attention
  the class token gives them and keeps the top K. A CNN has no class token, so
  one learned query per task scores the patches (softmax over patches,
  averaged over the queries) and the top K are kept; their softmax weights,
  renormalised, pool them into the local vector, so the scorer learns from the
  loss. K = 12 is our assumption (the paper's K: not stated).
- Cross-interaction (CIM): one transformer block in which the task tokens
  (the paper's disease, body-part and attribute representations) attend to
  the global token and the kept patches. Depth, heads: not stated; one block,
  4 heads, width 128.
- Tasks: the eight derm7pt tasks, plus body location from the release's
  `location` column as an auxiliary task (the paper's body-part head). Its
  logits are an extra output of the torch model, trained and reported by
  `evaluate`, and never part of the 17-category averaged AUC nor of the
  exported graphs (a clinic knows where the lesion is).
- One branch ("clinical"): the paper has one classifier per task, so P_FI is
  that branch's probabilities (branch weight 1).
- Backbone: the paper's ViT-B/16 (about 86 M parameters) is the
  `clinical-only-paper` preset; the default `clinical-only` runs on a CPU
  laptop (EfficientNet-Lite0, 224 px).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgederm import labels as L
from edgederm.errors import ConfigError
from edgederm.models.config import ModelConfig
from edgederm.models.encoders import FeatureEncoder
from edgederm.models.heads import BranchNet

TOKEN_WIDTH = 128
HEADS = 4
LOCATIONS = L.METADATA_FIELDS["location"]
# the classifiers, in order: the eight derm7pt tasks, then body location
HEAD_SIZES = (*L.NUM_CLASSES, len(LOCATIONS))


class LesionSelection(nn.Module):
    """The K patches of a stage map the task queries attend to most, and their weighted mean."""

    def __init__(self, channels: int, width: int, queries: int, keep: int):
        super().__init__()
        self.project = nn.Linear(channels, width)
        self.norm = nn.LayerNorm(width)
        self.queries = nn.Parameter(torch.randn(queries, width) * 0.02)
        self.keep = keep

    def forward(self, stage: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """B x C x H x W -> (kept patches B x K x width, local vector B x width)."""
        tokens = self.norm(self.project(stage.flatten(2).transpose(1, 2)))            # B x N x width
        scores = tokens @ self.queries.t() / tokens.shape[-1] ** 0.5                  # B x N x queries
        importance = scores.softmax(dim=1).mean(dim=2)                                # B x N, sums to 1
        weight, index = importance.topk(self.keep, dim=1)                             # B x K
        kept = torch.gather(tokens, 1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        local = (kept * (weight / weight.sum(dim=1, keepdim=True)).unsqueeze(-1)).sum(dim=1)
        return kept, local


class CrossInteraction(nn.Module):
    """Task tokens attend to a context (the global token and the kept patches): one pre-norm transformer
    block, attention written out so every exporter sees plain MatMul / Softmax."""

    def __init__(self, width: int, tokens: int, heads: int):
        super().__init__()
        self.tokens = nn.Parameter(torch.randn(tokens, width) * 0.02)
        self.heads = heads
        self.norm_query, self.norm_context, self.norm_mlp = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.query, self.key, self.value = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, width)
        self.out = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        return x.reshape(b, n, self.heads, w // self.heads).transpose(1, 2)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        """B x M x width -> task tokens B x T x width."""
        # repeat, not expand: a view of a parameter trips torch's FlopCounterMode (edgederm.models.summary)
        x = self.tokens.unsqueeze(0).repeat(context.shape[0], 1, 1)
        c = self.norm_context(context)
        attended = F.scaled_dot_product_attention(self._split(self.query(self.norm_query(x))),
                                                  self._split(self.key(c)), self._split(self.value(c)))
        x = x + self.out(attended.transpose(1, 2).flatten(2))
        return x + self.mlp(self.norm_mlp(x))


class ClinicalOnlyNet(BranchNet):
    branches = ("clinical",)

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.clinical_encoder = FeatureEncoder(cfg.clinical_encoder, cfg.img_size, cfg.branch_features)
        reduction = self.clinical_encoder.reductions[-1]
        patches = (cfg.img_size // reduction) ** 2
        if cfg.selected_patches > patches:
            raise ConfigError(f"model config: selected_patches {cfg.selected_patches} is more than the {patches} "
                              f"patches of {cfg.clinical_encoder}'s last stage at {cfg.img_size} px")
        width = TOKEN_WIDTH
        self.global_token = nn.Sequential(nn.Linear(self.clinical_encoder.pooled_channels, width), nn.LayerNorm(width))
        self.selection = LesionSelection(self.clinical_encoder.channels[-1], width, len(HEAD_SIZES),
                                         cfg.selected_patches)
        self.interaction = CrossInteraction(width, len(HEAD_SIZES), HEADS)
        self.drop = nn.Dropout(cfg.drop_rate)
        self.classifiers = nn.ModuleList(nn.Linear(3 * width, n) for n in HEAD_SIZES)

    def encoders(self) -> list[FeatureEncoder]:
        return [self.clinical_encoder]

    def forward(self, clinical: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"clinical": B x TOTAL_CLASSES logits of the eight tasks, "location": B x 9 logits}."""
        stages, pooled = self.clinical_encoder(clinical)
        global_token = self.global_token(pooled)
        kept, local = self.selection(stages[-1])
        tasks = self.interaction(torch.cat([global_token.unsqueeze(1), kept], dim=1))
        shared = torch.cat([global_token, local], dim=1)
        logits = [head(self.drop(torch.cat([shared, tasks[:, t]], dim=1))) for t, head in enumerate(self.classifiers)]
        return {"clinical": torch.cat(logits[:-1], dim=1), "location": logits[-1]}
