"""Model weights on disk: safetensors, with the model config in the file's
metadata, so a weights file is self-describing and loads without pickle."""
from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from edgederm.errors import ConfigError
from edgederm.models import BranchNet, create_model
from edgederm.models.config import ModelConfig


def save_weights(model: BranchNet, path: str | Path, extra: dict | None = None) -> None:
    """Write weights + config atomically (temporary name, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"model_config": json.dumps(model.cfg.to_dict())}
    metadata.update({k: json.dumps(v) for k, v in (extra or {}).items()})
    save_file(state, str(tmp), metadata=metadata)
    tmp.replace(path)


def read_metadata(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: weights file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise ConfigError(f"{path}: not a safetensors weights file ({e})") from None
    return {k: json.loads(v) for k, v in raw.items()}


def load_model(path: str | Path, map_location: str = "cpu") -> BranchNet:
    """Rebuild the network from a weights file written by `save_weights`."""
    path = Path(path)
    meta = read_metadata(path)
    if "model_config" not in meta:
        raise ConfigError(f"{path}: no model config in the file's metadata (not written by EdgeDerm)")
    model = create_model(ModelConfig.from_saved(meta["model_config"]))
    state = renamed_from_features_only(load_file(str(path), device=map_location), model.state_dict(), path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(f"{path}: weights do not match the config "
                          f"({len(missing)} missing, {len(unexpected)} unexpected tensors)")
    return model


def _canonical(key: str) -> str:
    # timm's features_only wrappers flatten nested names ("layers.0" -> "layers_0") and its
    # getter wrapper nests the model as "model."; the whole model uses neither
    return key.replace(".body.model.", ".body.").replace("_", ".")


def renamed_from_features_only(state: dict, expected: dict, path: Path) -> dict:
    """Weights saved before the encoders kept their whole timm model (EdgeDerm < 0.2 built them with
    features_only) name some encoder tensors differently; rename those to today's names. Identical
    tensors under other names: nothing is guessed, a name either matches canonically or stays."""
    if not set(expected) - set(state):
        return state
    by_canonical: dict[str, str] = {}
    for key in expected:
        if _canonical(key) in by_canonical:
            raise ConfigError(f"{path}: cannot map old tensor names, {key} and {by_canonical[_canonical(key)]} "
                              "are ambiguous")
        by_canonical[_canonical(key)] = key
    return {by_canonical.get(_canonical(k), k) if k not in expected else k: v for k, v in state.items()}
