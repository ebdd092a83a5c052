"""Model configuration (architecture only); the named presets are in edgederm.presets.

Preprocessing facts (resize rule, layout) live in `edgederm.preprocess` and
travel in bundle manifests; this file says what the network is, including the
input normalisation its encoders were pretrained with.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from edgederm.errors import ConfigError
from edgederm.preprocess import CROPS, IMAGENET_MEAN, IMAGENET_STD, PreprocessConfig

# Which network: the two-photo family of the paper (and its single-shared variant), the clinical-photo-only
# multi-task model after DermImitFormer (arXiv 2307.08308; edgederm.models.clinical_only), or the two photos
# plus patient metadata after JIF-MMFA (arXiv 2312.04189; edgederm.models.jif_mmfa).
ARCHITECTURES = ("two-encoder", "clinical-only", "jif-mmfa")
# The model inputs an architecture takes, in order: the exported graphs' input names, the manifests' "inputs".
ARCHITECTURE_INPUTS = {"two-encoder": ("clinical", "dermoscopy"), "clinical-only": ("clinical",),
                       "jif-mmfa": ("clinical", "dermoscopy", "metadata")}
FUSIONS = ("aab", "bab", "cat", "sca")   # sca: SSN's cross-attention, one set of weights for every stage
# What P_C and P_D read (edgederm.models.encoders): the encoder's pre-logits representation (conv head
# included), or its last stage map average-pooled (the head pruned; EdgeDerm before 0.2).
BRANCH_FEATURES = ("pre_logits", "last_stage")
# What the fusion head P_FU reads (edgederm.models.multimodal):
#   fused             the pooled fused stage maps (the paper's structure; EdgeDerm before 0.3)
#   fused+pre_logits  those, and both encoders' pooled features (what P_C and P_D read)
#   pre_logits        both encoders' pooled features only: late fusion by concatenation
#   fused_head        the last fused map through the dermoscopy encoder's own conv head (the weights P_D
#                     uses), pooled, with the other fused stages pooled beside it
# jif-mmfa fuses pooled features, not maps: there `fused` is its attention's tokens and `fused_head` does not
# apply; a clinical-only model has no fusion head at all.
FUSION_FEATURES = ("fused", "fused+pre_logits", "pre_logits", "fused_head")
# Input mean/std per pretraining convention. "inception" is TensorFlow's [-1, 1]
# scaling, used by the EfficientNet-Lite checkpoints (timm's tf_* models).
NORMALIZATIONS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}


@dataclass(frozen=True)
class ModelConfig:
    clinical_encoder: str = "mobilenetv3_large_100"         # any timm name with features_only
    derm_encoder: str = "swin_tiny_patch4_window7_224"       # any timm name with features_only
    fusion: str = "aab"                 # aab: asymmetric attention; bab: bidirectional; cat: concatenation
    fusion_stages: tuple[int, ...] = (-2, -1)   # dermoscopy feature stages with a fusion block (negative from the end)
    key_ratio: int = 8                  # attention key/query channels = stage channels // key_ratio
    attention_scale: bool = True        # softmax of key.query / sqrt(key channels); the paper's is unscaled
    img_size: int = 224
    drop_rate: float = 0.2              # dropout before each head
    normalization: str = "imagenet"     # key of NORMALIZATIONS: the convention the encoders were pretrained with
    branch_features: str = "pre_logits"  # key of BRANCH_FEATURES: what the single-modality heads read
    fusion_features: str = "fused"       # key of FUSION_FEATURES: what the fusion head reads
    crop: str = "none"                  # key of preprocess.CROPS, at training and on the device (in the manifest)
    shared_encoder: bool = False        # SSN: one encoder (derm_encoder) whose weights both photos go through
    architecture: str = "two-encoder"   # key of ARCHITECTURES
    selected_patches: int = 12          # clinical-only: the K most informative patches the lesion selection keeps

    @property
    def framework(self) -> str:
        """SFF when both modalities use the same (heavy) encoder, AFF otherwise."""
        return "sff" if self.clinical_encoder == self.derm_encoder else "aff"

    @property
    def inputs(self) -> tuple[str, ...]:
        """The network's inputs, in the order its forward and every exported graph take them."""
        return ARCHITECTURE_INPUTS[self.architecture]

    @property
    def learns_location(self) -> bool:
        """Whether the network has the auxiliary body-location task (clinical-only)."""
        return self.architecture == "clinical-only"

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"model config: architecture {self.architecture!r} is not one of "
                              f"{', '.join(ARCHITECTURES)}")
        if self.architecture == "clinical-only" and (self.shared_encoder or self.clinical_encoder != self.derm_encoder):
            raise ConfigError("model config: a clinical-only model has one encoder: set derm_encoder to the "
                              f"clinical encoder ({self.clinical_encoder!r}) and shared_encoder to false")
        if self.architecture == "jif-mmfa" and self.shared_encoder:
            raise ConfigError("model config: a jif-mmfa model has an encoder per photo; set shared_encoder to false")
        if self.selected_patches < 1:
            raise ConfigError("model config: selected_patches must be >= 1")
        if self.fusion not in FUSIONS:
            raise ConfigError(f"model config: fusion {self.fusion!r} is not one of {', '.join(FUSIONS)}")
        if self.shared_encoder and self.clinical_encoder != self.derm_encoder:
            raise ConfigError(f"model config: shared_encoder needs one encoder for both photos, got "
                              f"{self.clinical_encoder!r} and {self.derm_encoder!r}")
        if not self.fusion_stages:
            raise ConfigError("model config: fusion_stages is empty; give at least one stage")
        if len(set(self.fusion_stages)) != len(self.fusion_stages):
            raise ConfigError(f"model config: fusion_stages {list(self.fusion_stages)} repeats a stage")
        if self.normalization not in NORMALIZATIONS:
            raise ConfigError(f"model config: normalization {self.normalization!r} is not one of "
                              f"{', '.join(NORMALIZATIONS)}")
        if self.branch_features not in BRANCH_FEATURES:
            raise ConfigError(f"model config: branch_features {self.branch_features!r} is not one of "
                              f"{', '.join(BRANCH_FEATURES)}")
        self._check_fusion_features()
        if self.crop not in CROPS:
            raise ConfigError(f"model config: crop {self.crop!r} is not one of {', '.join(CROPS)}")
        if self.key_ratio < 1 or self.img_size < 32 or not 0 <= self.drop_rate < 1:
            raise ConfigError("model config: key_ratio >= 1, img_size >= 32 and 0 <= drop_rate < 1 are required")

    def _check_fusion_features(self) -> None:
        """What can be told from the config alone; what needs the encoders (a conv head) is checked when the
        network is built, still before any training."""
        value, allowed = self.fusion_features, FUSION_FEATURES
        if self.architecture == "clinical-only":
            allowed = ("fused",)        # the default, standing for "no fusion head"
            why = "a clinical-only model has no fusion head"
        elif self.architecture == "jif-mmfa":
            allowed = ("fused", "fused+pre_logits", "pre_logits")
            why = "jif-mmfa fuses pooled features, so there is no fused map for a conv head"
        elif value == "fused_head" and self.branch_features != "pre_logits":
            allowed = ("fused", "fused+pre_logits", "pre_logits")
            why = "with branch_features last_stage the encoders' heads are pruned"
        elif value == "fused_head" and self.fusion not in ("aab", "cat"):
            allowed = ("fused", "fused+pre_logits", "pre_logits")
            why = f"{self.fusion} fuses into a map twice the stage's width, which the encoder's head cannot take"
        else:
            why = ""
        if value not in allowed:
            raise ConfigError(f"model config: fusion_features {value!r} is not one of {', '.join(allowed)}"
                              + (f" ({why})" if why and value in FUSION_FEATURES else ""))

    def preprocess(self) -> PreprocessConfig:
        """How photos become this network's inputs."""
        mean, std = NORMALIZATIONS[self.normalization]
        return PreprocessConfig(size=self.img_size, mean=mean, std=std, crop=self.crop)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fusion_stages"] = list(self.fusion_stages)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """A config from keys a person wrote (a config file, a preset's overrides): a missing key takes the
        dataclass default, as `ModelConfig()` does."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"model config: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(names))})")
        d = dict(d)
        if "fusion_stages" in d:
            d["fusion_stages"] = tuple(int(s) for s in d["fusion_stages"])
        return cls(**d)

    @classmethod
    def from_saved(cls, d: dict) -> "ModelConfig":
        """A config EdgeDerm saved with trained weights or a run (`to_dict`, every key of its version). A key
        missing there means the weights predate it, so it takes the value that version built: heads on the
        last stage map before branch_features existed (the other keys' defaults are what was built then)."""
        return cls.from_dict({"branch_features": "last_stage", **d})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "ModelConfig":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise ConfigError(f"{path}: model config not found") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def with_overrides(cfg: ModelConfig, **overrides) -> ModelConfig:
    """The config with the non-None overrides applied (CLI flags left unset are None)."""
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
