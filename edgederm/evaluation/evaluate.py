"""Evaluate a run's weights on a split of a release: every branch and the weighted final."""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader

from edgederm.data.release import read_release
from edgederm.data.torch_dataset import PairDataset
from edgederm.errors import ConfigError
from edgederm.evaluation.predict import predict_branches
from edgederm.models.io import load_model, read_metadata
from edgederm.models.tta import VIEW_SETS, tta_views
from edgederm.scoring.calibration import calibration_report, fit_calibration, stored_calibration
from edgederm.scoring.metrics import compute_metrics, location_metrics
from edgederm.scoring.weighted_average import weighted_final

CHECKPOINTS = {"model": "model.safetensors", "best": "best.safetensors", "swa": "swa.safetensors"}


def evaluate_run(run_dir: str | Path, data: str | Path, split: str = "test", checkpoint: str = "model",
                 tta: bool | str = False, batch_size: int = 32, progress=None) -> dict:
    """Metrics of every branch on `split`. `tta`: False, True (six views) or a view set's name
    (edgederm.models.tta)."""
    run_dir = Path(run_dir)
    views = tta_views(tta)          # an unknown view set is an error before the model loads
    if checkpoint not in CHECKPOINTS:
        raise ConfigError(f"unknown checkpoint {checkpoint!r} (choose from {', '.join(CHECKPOINTS)})")
    weights = run_dir / CHECKPOINTS[checkpoint]
    if not weights.is_file():
        hint = " (has training finished?)" if checkpoint == "model" else ""
        raise ConfigError(f"{weights}: not found{hint}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(weights).to(device)
    cases = read_release(data).split(split)
    if not cases:
        raise ConfigError(f"{data}: the {split} split is empty")
    loader = DataLoader(PairDataset.for_model(cases, model.cfg, cache=False), batch_size=batch_size)
    location: dict = {}
    branch_probs, labels = predict_branches(model, loader, device, tta=tta, progress=progress, location=location)
    weights_used, searched_on = model.branch_weights.tolist(), "single view"
    # searched on six-view TTA outputs at training time (branch_weights_tta): the ones for those six views;
    # other view sets keep the model's weights, as a bundle with those views built in does
    tta_weights = read_metadata(weights).get("branch_weights_tta") if views == VIEW_SETS["six"] else None
    if tta_weights:
        weights_used, searched_on = tta_weights, "6-view TTA"
    branch_probs["final"] = weighted_final(branch_probs, weights_used)
    fit, fitted = _calibration_fit(model, weights, data, split, tta, weights_used, batch_size, device, progress)
    return {
        "run": str(run_dir), "weights": str(weights), "data": str(data), "split": split,
        "tta": None if len(views) == 1 else list(views),
        "cases": len(cases), "branch_weights": weights_used, "branch_weights_searched_on": searched_on,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "branches": {b: compute_metrics(p, labels) for b, p in branch_probs.items()},
        "calibration": {"fit": fit, "fitted": fitted, **calibration_report(fit, branch_probs["final"], labels)},
        "location": location_metrics(location["probabilities"], location["labels"]) if location else None,
    }


def _calibration_fit(model, weights: Path, data, split: str, tta: bool | str, branch_weights: list[float],
                     batch_size: int, device, progress) -> tuple[dict, str]:
    """The temperatures and thresholds to evaluate with, and where they come from: training's (fitted on the
    single-view valid P_FI, stored with the weights), or fitted now on valid when the run has none (trained
    before they existed) or when TTA outputs are evaluated (fitted on what they will be applied to)."""
    stored = stored_calibration(read_metadata(weights))
    if stored and not tta:
        return stored, "at training, on the valid split"
    cases = read_release(data).split("valid")
    if not cases:
        raise ConfigError(f"{data}: the valid split is empty: temperatures and thresholds are fitted on it")
    loader = DataLoader(PairDataset.for_model(cases, model.cfg, cache=False), batch_size=batch_size)
    branch_probs, labels = predict_branches(model, loader, device, tta=tta, progress=progress)
    views = len(tta_views(tta))
    fitted = f"now, on the valid split's {f'{views}-view TTA' if views > 1 else 'single-view'} outputs"
    return fit_calibration(weighted_final(branch_probs, branch_weights), labels), fitted
