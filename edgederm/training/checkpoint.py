"""Resumable training state without pickle.

A checkpoint is a folder `checkpoints/epoch-NNNN/`:
    model.safetensors   weights + model config (edgederm.models.io)
    state.safetensors   optimiser tensors, SWA model tensors, moving-average (EMA) tensors, torch RNG state
    state.json          epoch, optimiser hyper-parameters, scheduler state, best score, EMA updates so far
It is written under a temporary name and renamed when complete; then
`checkpoints/last.json` is replaced atomically to point at it, and older
folders are removed. A crash at any moment leaves `last.json` pointing at a
complete checkpoint.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from edgederm.errors import ConfigError
from edgederm.models.io import renamed_from_features_only, save_weights

POINTER = "last.json"


def _split_optimizer_state(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, plain = {}, {"param_groups": state["param_groups"], "state": {}}
    for pid, entries in state["state"].items():
        plain["state"][str(pid)] = {}
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                plain["state"][str(pid)][name] = value
    return tensors, plain


def _join_optimizer_state(tensors: dict[str, torch.Tensor], plain: dict) -> dict:
    state = {int(pid): dict(entries) for pid, entries in plain["state"].items()}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": plain["param_groups"]}


def save_checkpoint(run_dir: Path, epoch: int, model, optimizer, scheduler, swa_model, best_score: float,
                    ema=None, ema_updates: int = 0) -> Path:
    """Save the state after `epoch` (0-based) finished; returns the folder. `ema`: the moving average of the
    weights (timm's ModelEmaV3) or None, `ema_updates`: the optimizer steps it has averaged."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"epoch-{epoch:04d}"
    tmp = root / f".epoch-{epoch:04d}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_weights(model, tmp / "model.safetensors", extra={"epoch": epoch})
    tensors, optimizer_plain = _split_optimizer_state(optimizer.state_dict())
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    if swa_model is not None:
        for k, v in swa_model.state_dict().items():
            tensors[f"swa.{k}"] = v.detach().cpu().contiguous()
    if ema is not None:
        for k, v in ema.state_dict().items():
            tensors[f"ema.{k}"] = v.detach().cpu().contiguous()
    save_file(tensors, str(tmp / "state.safetensors"))
    (tmp / "state.json").write_text(json.dumps({
        "epoch": epoch, "best_score": best_score, "ema_updates": ema_updates, "optimizer": optimizer_plain,
        "scheduler": {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"},
    }, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    pointer_tmp = root / (POINTER + ".partial")
    pointer_tmp.write_text(json.dumps({"epoch": epoch, "dir": final.name}))
    os.replace(pointer_tmp, root / POINTER)
    for old in root.glob("epoch-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(run_dir: Path, model, optimizer, scheduler, swa_model, ema=None) -> tuple[int, float, int]:
    """Restore the last checkpoint into the given objects; returns (epoch, best score, EMA updates)."""
    pointer = run_dir / "checkpoints" / POINTER
    if not pointer.is_file():
        raise ConfigError(f"{run_dir}: no checkpoint to resume from ({pointer} is missing)")
    folder = run_dir / "checkpoints" / json.loads(pointer.read_text())["dir"]
    state = json.loads((folder / "state.json").read_text())
    tensors = load_file(str(folder / "state.safetensors"))
    weights = renamed_from_features_only(load_file(str(folder / "model.safetensors")), model.state_dict(), folder)
    try:
        model.load_state_dict(weights)
    except RuntimeError:
        raise ConfigError(f"{folder / 'model.safetensors'}: the checkpoint's tensors do not match this run's model "
                          "(started by another EdgeDerm version?); finish the run with the EdgeDerm that started "
                          "it, or start a new run") from None
    saved_groups, groups = len(state["optimizer"]["param_groups"]), len(optimizer.param_groups)
    if saved_groups != groups:   # runs started before encoders got their own learning rate had one group
        raise ConfigError(f"{folder / 'state.json'}: the optimiser state has {saved_groups} parameter group(s), this "
                          f"EdgeDerm trains with {groups}; finish the run with the EdgeDerm that started it, "
                          "or start a new run")
    optimizer.load_state_dict(_join_optimizer_state(tensors, state["optimizer"]))
    scheduler.load_state_dict({**scheduler.state_dict(), **state["scheduler"]})
    if swa_model is not None:
        swa_state = {k[len("swa."):]: v for k, v in tensors.items() if k.startswith("swa.")}
        swa_model.load_state_dict(renamed_from_features_only(swa_state, swa_model.state_dict(), folder))
    if ema is not None:
        ema_state = {k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")}
        if not ema_state:
            raise ConfigError(f"{folder / 'state.safetensors'}: the checkpoint has no moving average of the weights "
                              "(ema_decay) to resume")
        ema.load_state_dict(renamed_from_features_only(ema_state, ema.state_dict(), folder))
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        cuda_states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    return state["epoch"], state["best_score"], state.get("ema_updates", 0)
