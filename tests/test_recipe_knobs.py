"""Two recipe knobs a sweep tries: the moving average of the weights (ema_decay) against SWA, and mixup /
CutMix across the photo pair (mixup_alpha, cutmix_alpha, mix_prob): one draw for both photos of a case."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from typer.testing import CliRunner

from edgederm import labels as L
from edgederm.cli import app
from edgederm.data.release import read_release
from edgederm.data.torch_dataset import PairDataset
from edgederm.errors import ConfigError
from edgederm.models.io import load_model, read_metadata
from edgederm.presets import resolve_config
from edgederm.training import trainer as trainer_module
from edgederm.training.loss import class_weights_from_counts, mixed_multitask_loss, multitask_loss
from edgederm.training.mixup import NO_MIX, BatchMixer, MixDraw, cutmix_box, draw_mix, mix_inputs
from edgederm.training.recipe import TrainConfig
from edgederm.training.trainer import train, validate
from tests.helpers import FAST_TRAINING, crash_after_checkpoint, fast_configs

# batches of 4: three optimizer steps an epoch on the 15 train cases (batches of 8 would make one, and the
# average's first update copies the weights)
EMA = {"swa_epochs": 0, "ema_decay": 0.8, "batch_size": 4}
NOT_AVERAGED = "branch_weights"     # the searched branch weights: set on the final model after training


def _floats(state: dict) -> dict:
    return {k: v for k, v in state.items() if v.is_floating_point() and k != NOT_AVERAGED}


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def _differs(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in _floats(a))


# --- the moving average of the weights --------------------------------------------------------------------


@pytest.fixture(scope="module")
def ema_run(synthetic_release, tmp_path_factory):
    """A 3-epoch EMA run ending with the average after the last epoch, with each epoch's raw weights and
    average recorded as the trainer checkpoints them."""
    epochs = {}
    real_save = trainer_module.save_checkpoint

    def recording_save(run_dir, epoch, model, optimizer, scheduler, swa_model, best_score, ema, *rest):
        epochs[epoch] = {"raw": {k: v.detach().clone() for k, v in model.state_dict().items()},
                         "ema": {k: v.detach().clone() for k, v in ema.module.state_dict().items()}}
        return real_save(run_dir, epoch, model, optimizer, scheduler, swa_model, best_score, ema, *rest)
    run = tmp_path_factory.mktemp("ema") / "run"
    model_cfg, train_cfg = fast_configs(**EMA, final_weights="last")
    trainer_module.save_checkpoint = recording_save
    try:
        train(synthetic_release, run, model_cfg, train_cfg, progress=False)
    finally:
        trainer_module.save_checkpoint = real_save
    return run, epochs


def test_ema_is_what_valid_scores_and_what_the_run_keeps(ema_run, synthetic_release):
    run, epochs = ema_run
    assert sorted(epochs) == [0, 1, 2]
    final = load_file(run / "model.safetensors")
    last = epochs[2]
    # final_weights "last": the average after the last epoch, not the last epoch's weights
    _assert_same(_floats(final), _floats(last["ema"]))
    assert _differs(final, last["raw"])
    assert json.loads((run / "branch_weights.json").read_text())["weights_of"] == "ema-last"
    # best.safetensors: the average at its best valid epoch, not that epoch's raw weights
    best_meta = read_metadata(run / "best.safetensors")
    best = load_file(run / "best.safetensors")
    assert best_meta["weights_of"] == "ema"
    _assert_same(_floats(best), _floats(epochs[best_meta["epoch"]]["ema"]))
    assert _differs(best, epochs[best_meta["epoch"]]["raw"])
    # valid scored the average: the last epoch's recorded AUC is the average's (equal branch weights, as trained)
    model_cfg, _ = fast_configs()
    model = load_model(run / "model.safetensors").to(memory_format=torch.channels_last)
    model.set_branch_weights(*[1 / len(model.branches)] * len(model.branches))
    loader = DataLoader(PairDataset.for_model(read_release(synthetic_release).split("valid"), model_cfg),
                        batch_size=16)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["valid_avg_auc"] == pytest.approx(validate(model, loader, torch.device("cpu"))["avg_auc"],
                                                       abs=1e-9)
    assert max(x["valid_avg_auc"] for x in lines) == pytest.approx(best_meta["valid_avg_auc"])


def test_an_interrupted_ema_run_resumes_to_the_same_weights(ema_run, synthetic_release, tmp_path, monkeypatch):
    straight, _ = ema_run
    crash_after_checkpoint(monkeypatch, after_epoch=1)     # killed after the second epoch's checkpoint
    run = tmp_path / "resumed"
    model_cfg, train_cfg = fast_configs(**EMA, final_weights="last")
    with pytest.raises(KeyboardInterrupt):
        train(synthetic_release, run, model_cfg, train_cfg, progress=False)
    folder = run / "checkpoints" / json.loads((run / "checkpoints" / "last.json").read_text())["dir"]
    assert any(k.startswith("ema.") for k in load_file(folder / "state.safetensors"))
    monkeypatch.undo()
    train(synthetic_release, run, model_cfg, train_cfg, resume=True, progress=False)
    for name in ("model.safetensors", "best.safetensors"):
        _assert_same(load_file(run / name), load_file(straight / name))


def test_ema_is_checked_and_refused_beside_swa(synthetic_release, tmp_path):
    with pytest.raises(ConfigError) as refused:
        TrainConfig(epochs=10, swa_epochs=2, ema_decay=0.998)
    assert "ema_decay needs swa_epochs 0" in str(refused.value) and "\n" not in str(refused.value)
    for bad in (1.0, -0.1):
        with pytest.raises(ConfigError, match="ema_decay must be 0"):
            TrainConfig(swa_epochs=0, ema_decay=bad)
    assert TrainConfig(swa_epochs=0, ema_decay=0.998).ema_decay == 0.998
    result = CliRunner().invoke(app, ["train", "--data", str(synthetic_release), "--out", str(tmp_path / "r"),
                                      "--preset", "tiny", "--ema-decay", "0.99"])
    assert result.exit_code == 1
    assert [line for line in result.output.splitlines() if "ema_decay" in line] == [result.output.strip()]
    assert "ema_decay needs swa_epochs 0" in result.output and not (tmp_path / "r").exists()


# --- mixup / CutMix across the pair ------------------------------------------------------------------------


def _batch(n: int = 5, size: int = 12):
    torch.manual_seed(0)
    return [torch.randn(n, 3, size, size), torch.randn(n, 3, size, size), torch.rand(n, L.METADATA_SIZE)]


def test_mixup_gives_both_photos_one_lambda_and_one_partner():
    batch = _batch()
    copies = [x.clone() for x in batch]
    mixer = BatchMixer(mixup_alpha=0.4, cutmix_alpha=0.0, mix_prob=1.0, generator=torch.Generator().manual_seed(1))
    mixed, draw = mixer(batch)
    assert draw.box is None and 0 < draw.lam < 1
    for before, after in zip(batch, mixed):    # photo_mixed - lam photo == (1 - lam) photo[reversed], each input
        torch.testing.assert_close(after - draw.lam * before, (1 - draw.lam) * before.flip(0))
    for before, copy in zip(batch, copies):                  # not changed in place
        assert torch.equal(before, copy)
    assert all(a is b for a, b in zip(mix_inputs(batch, NO_MIX), batch))


def test_cutmix_pastes_the_same_box_in_both_photos():
    batch = _batch(n=4, size=16)
    mixer = BatchMixer(mixup_alpha=0.0, cutmix_alpha=1.0, mix_prob=1.0, generator=torch.Generator().manual_seed(3))
    pasted = []
    for _ in range(20):
        mixed, draw = mixer(batch)
        if not draw.mixed:         # a box that covers nothing or was clipped away: lam 1
            continue
        assert draw.box is not None
        masks = []
        for before, after in zip(batch[:2], mixed[:2]):
            changed = (after != before).any(0).any(0)              # H x W: where the partner was pasted
            torch.testing.assert_close(after[..., changed], before.flip(0)[..., changed])
            masks.append(changed)
        assert torch.equal(masks[0], masks[1])                   # the same place in both photos
        rows, cols = masks[0].any(1).nonzero().flatten(), masks[0].any(0).nonzero().flatten()
        assert masks[0].sum() == len(rows) * len(cols)           # a box
        assert draw.lam == pytest.approx(1 - masks[0].sum().item() / 16 ** 2)   # lam of the pasted area
        torch.testing.assert_close(mixed[2], torch.lerp(batch[2].flip(0), batch[2], draw.lam))
        pasted.append(masks[0].sum().item())
    assert len(set(pasted)) > 3                                  # boxes of many sizes


def test_the_box_is_timms_geometry_drawn_from_our_generator(monkeypatch):
    import timm.data.mixup as timm_mixup

    class Centres:
        def __init__(self, values):
            self.values = list(values)

        def integers(self, low, high):
            return self.values.pop(0)

        def randint(self, low, high, size=None):
            return self.values.pop(0)
    for lam, cy, cx in ((0.3, 0, 0), (0.5, 7, 9), (0.9, 15, 3), (0.05, 8, 8), (0.7, 2, 14)):
        ours = cutmix_box(16, 20, lam, Centres([cy, cx]))
        monkeypatch.setattr(np.random, "randint", Centres([cy, cx]).randint)
        (yl, yh, xl, xh), timm_lam = timm_mixup.cutmix_bbox_and_lam((4, 3, 16, 20), lam)
        assert ours == ((int(yl), int(yh), int(xl), int(xh)), pytest.approx(timm_lam))


def test_draws_stay_in_range_follow_mix_prob_and_repeat():
    def draws(seed, **knobs):
        g = torch.Generator().manual_seed(seed)
        return [draw_mix(height=16, width=16, generator=g, **knobs) for _ in range(400)]
    both = draws(0, mixup_alpha=0.4, cutmix_alpha=1.0, mix_prob=1.0)
    assert all(0 <= d.lam <= 1 for d in both)
    assert 120 < sum(d.box is not None for d in both) < 280      # CutMix about half the time
    assert draws(0, mixup_alpha=0.4, cutmix_alpha=1.0, mix_prob=1.0) == both      # same seed, same draws
    assert draws(1, mixup_alpha=0.4, cutmix_alpha=1.0, mix_prob=1.0) != both
    half = draws(0, mixup_alpha=0.4, cutmix_alpha=0.0, mix_prob=0.5)
    assert 120 < sum(d == NO_MIX for d in half) < 280
    assert all(d == NO_MIX for d in draws(0, mixup_alpha=0.4, cutmix_alpha=1.0, mix_prob=0.0))
    batch = _batch()
    mixed, draw = BatchMixer(0.4, 1.0, 0.0, torch.Generator().manual_seed(0))(batch)
    assert draw == NO_MIX and all(a is b for a, b in zip(mixed, batch))         # mix_prob 0: unchanged
    for bad in ({"mixup_alpha": -1.0}, {"cutmix_alpha": -0.5}, {"mix_prob": 1.5}):
        with pytest.raises(ConfigError, match="mixup_alpha and cutmix_alpha must be >= 0|mix_prob must be"):
            TrainConfig(**bad)


def test_the_mixed_loss_is_the_lambda_weighted_sum_of_the_two_losses():
    torch.manual_seed(0)
    logits = {b: torch.randn(6, L.TOTAL_CLASSES) for b in ("clinical", "derm", "fusion")}
    logits["location"] = torch.randn(6, 9)                      # the clinical-only network's auxiliary task
    targets = torch.stack([torch.randint(0, k, (6,)) for k in (*L.NUM_CLASSES, 9)], 1)
    partner = targets.flip(0)
    knobs = {"class_weights": class_weights_from_counts(targets[:, :L.NUM_TASKS]), "label_smoothing": 0.1,
             "branch_weights": {"clinical": 0.5, "derm": 1.0, "fusion": 2.0}, "location_weight": 0.3}
    own = multitask_loss(logits, targets, **knobs)
    assert torch.equal(mixed_multitask_loss(logits, targets, partner, 1.0, **knobs), own)
    theirs = multitask_loss(logits, partner, **knobs)
    torch.testing.assert_close(mixed_multitask_loss(logits, targets, partner, 0.3, **knobs), 0.3 * own + 0.7 * theirs)
    # the location task alone, by hand: its cross-entropy mixed the same way
    location = {"location": logits["location"]}
    expected = (0.3 * F.cross_entropy(logits["location"], targets[:, L.NUM_TASKS])
                + 0.7 * F.cross_entropy(logits["location"], partner[:, L.NUM_TASKS]))
    torch.testing.assert_close(mixed_multitask_loss(location, targets, partner, 0.3), expected)


# the two-photo network, the clinical-only one (its location task's loss mixed too) and jif-mmfa (its metadata
# input mixed by lam)
@pytest.mark.parametrize("preset", ["tiny", "clinical-only-tiny", "jif-mmfa-tiny"])
def test_a_mixed_run_trains_and_writes_its_model(preset, synthetic_release, tmp_path, monkeypatch):
    lams = []
    real_loss = trainer_module.mixed_multitask_loss

    def recording_loss(logits, targets, partner, lam, *args):
        lams.append(lam)
        return real_loss(logits, targets, partner, lam, *args)
    monkeypatch.setattr(trainer_module, "mixed_multitask_loss", recording_loss)
    overrides = {} if preset.startswith("clinical-only") else {"img_size": 64}
    model_cfg, train_cfg = resolve_config(preset, model_overrides=overrides, train_overrides={
        **FAST_TRAINING, "epochs": 2, "batch_size": 4, "swa_epochs": 1, "mixup_alpha": 0.4, "cutmix_alpha": 1.0, "mix_prob": 0.8})
    run = tmp_path / "mixed"
    train(synthetic_release, run, model_cfg, train_cfg, progress=False)
    assert (run / "model.safetensors").is_file()
    assert any(lam < 1 for lam in lams) and all(0 <= lam <= 1 for lam in lams)
    saved = json.loads((run / "config.json").read_text())["train"]
    assert (saved["mixup_alpha"], saved["cutmix_alpha"], saved["mix_prob"]) == (0.4, 1.0, 0.8)
    assert all(np.isfinite(json.loads(x)["train_loss"]) for x in (run / "metrics.jsonl").read_text().splitlines())


def test_a_mixed_run_repeats_and_resumes_bit_for_bit(synthetic_release, tmp_path, monkeypatch):
    """The draws come from a generator reseeded each epoch: a run stopped after its first epoch and resumed
    ends with the weights of the run that was not stopped."""
    model_cfg, train_cfg = fast_configs(epochs=2, batch_size=4, swa_epochs=0, final_weights="last",
                                        mixup_alpha=0.4, cutmix_alpha=1.0)
    train(synthetic_release, tmp_path / "straight", model_cfg, train_cfg, progress=False)
    crash_after_checkpoint(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train(synthetic_release, tmp_path / "resumed", model_cfg, train_cfg, progress=False)
    monkeypatch.undo()
    train(synthetic_release, tmp_path / "resumed", model_cfg, train_cfg, resume=True, progress=False)
    _assert_same(load_file(tmp_path / "resumed" / "model.safetensors"),
                 load_file(tmp_path / "straight" / "model.safetensors"))


def test_mix_draw_defaults():
    assert MixDraw() == NO_MIX and not NO_MIX.mixed
    assert not TrainConfig().mixes and TrainConfig(cutmix_alpha=1.0).mixes
    defaults = TrainConfig()
    assert (defaults.ema_decay, defaults.mixup_alpha, defaults.cutmix_alpha, defaults.mix_prob) == (0.0, 0.0, 0.0, 1.0)
