"""Training: recipes and config resolution, the loss, the branch-weight search,
a full run on a small synthetic release, resume, and the run-folder rules."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from edgederm import labels as L
from edgederm.errors import ConfigError
from edgederm.scoring.metrics import averaged_auc
from edgederm.models.io import load_model
from edgederm.training.branch_weights import search_branch_weights, weight_grid
from edgederm.training.loss import class_weights_from_counts, multitask_loss
from edgederm.presets import get_preset, resolve_config
from edgederm.training.recipe import TrainConfig
from edgederm.training.trainer import train
from tests.helpers import crash_after_checkpoint, fast_configs

def test_paper_recipe_defaults():
    paper = get_preset("paper").recipe
    assert (paper.batch_size, paper.epochs, paper.swa_epochs, paper.lr) == (24, 250, 50, 3e-5)
    assert paper.augment and not paper.class_weights
    factors = [paper.lr_factor(e) for e in range(paper.epochs)]
    assert factors[0] == 1.0 and factors[199] < 0.01                 # cosine over the 200 epochs before SWA
    assert all(a >= b for a, b in zip(factors[:200], factors[1:200]))
    assert set(factors[200:]) == {paper.swa_lr / paper.lr}          # constant while averaging


def test_config_resolution_preset_then_file_then_flags(tmp_path):
    (tmp_path / "run.toml").write_text('[model]\nfusion = "bab"\n[train]\nepochs = 30\nlr = 0.001\n')
    model, train_cfg = resolve_config("paper", tmp_path / "run.toml", train_overrides={"epochs": 60, "seed": None})
    assert model.fusion == "bab" and model.derm_encoder == "swin_tiny_patch4_window7_224"
    assert train_cfg.epochs == 60 and train_cfg.lr == 0.001 and train_cfg.batch_size == 24
    (tmp_path / "bad.json").write_text(json.dumps({"train": {"epochz": 3}}))
    with pytest.raises(ConfigError, match=r"bad.json \[train\]: unknown key\(s\) epochz"):
        resolve_config("paper", tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="swa_epochs must be between"):
        TrainConfig(epochs=10, swa_epochs=11)


def test_recipe_knobs_are_checked_and_change_what_they_say():
    linear = TrainConfig(epochs=10, swa_epochs=0, schedule="linear")
    assert [round(linear.lr_factor(e), 2) for e in (0, 5)] == [1.0, 0.5]
    assert TrainConfig(epochs=10, swa_epochs=2, schedule="constant").lr_factor(7) == 1.0
    assert TrainConfig(augment_policy="light", rotate_limit=5.0).augmentation().rotate_limit == 5.0
    assert TrainConfig(augment=False).augmentation() is None
    with pytest.raises(ConfigError, match="optimizer 'lamb' is not one of adam, adamw, sgd"):
        TrainConfig(optimizer="lamb")
    with pytest.raises(ConfigError, match="train config: augmentation policy 'hard'"):
        TrainConfig(augment_policy="hard")
    with pytest.raises(ConfigError, match="label_smoothing must be"):
        TrainConfig(label_smoothing=1.0)
    logits = {"fusion": torch.randn(4, L.TOTAL_CLASSES)}
    targets = torch.zeros(4, len(L.TASKS), dtype=torch.long)
    assert not torch.isclose(multitask_loss(logits, targets), multitask_loss(logits, targets, label_smoothing=0.1))


def test_recipe_knobs_reach_the_run(synthetic_release, tmp_path):
    (tmp_path / "knobs.toml").write_text(
        '[model]\nimg_size = 64\ncrop = "center"\nbranch_features = "last_stage"\n'
        '[train]\nepochs = 2\nbatch_size = 8\nswa_epochs = 0\nwarmup_epochs = 0\noptimizer = "sgd"\n'
        'schedule = "linear"\naugment_policy = "light"\nrotate_limit = 10.0\nlabel_smoothing = 0.1\n'
        'branch_weights_tta = true\n')
    model_cfg, train_cfg = resolve_config("tiny", tmp_path / "knobs.toml")
    run = tmp_path / "run"
    train(synthetic_release, run, model_cfg, train_cfg, progress=False)
    config = json.loads((run / "config.json").read_text())
    assert config["preprocess"]["crop"] == "center" and config["model"]["branch_features"] == "last_stage"
    assert {k: config["train"][k] for k in ("optimizer", "schedule", "augment_policy", "rotate_limit")} == \
        {"optimizer": "sgd", "schedule": "linear", "augment_policy": "light", "rotate_limit": 10.0}
    searched = json.loads((run / "branch_weights.json").read_text())
    assert searched["outputs"] == "single view" and searched["tta"]["outputs"] == "6-view TTA"
    from edgederm.evaluation.evaluate import evaluate_run
    from edgederm.models.io import read_metadata
    tta_weights = [searched["tta"][b] for b in ("clinical", "derm", "fusion")]
    assert read_metadata(run / "model.safetensors")["branch_weights_tta"] == tta_weights
    # the model (what bundles export) keeps the single-view weights; evaluate --tta uses the TTA-searched ones
    assert load_model(run / "model.safetensors").branch_weights.tolist() == pytest.approx(
        [searched[b] for b in ("clinical", "derm", "fusion")])
    with_tta = evaluate_run(run, synthetic_release, split="valid", tta=True)
    assert with_tta["branch_weights"] == tta_weights and with_tta["branch_weights_searched_on"] == "6-view TTA"
    assert evaluate_run(run, synthetic_release, split="valid")["branch_weights_searched_on"] == "single view"
    assert load_model(run / "model.safetensors").cfg.crop == "center"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    # the rate recorded is the next epoch's: linear over two epochs -> half, then zero
    assert [line["lr"] for line in lines] == pytest.approx([0.5 * train_cfg.lr, 0.0])


def test_loss_is_the_sum_over_three_branches_and_eight_tasks():
    torch.manual_seed(0)
    logits = {b: torch.randn(4, L.TOTAL_CLASSES) for b in ("clinical", "derm", "fusion")}
    targets = torch.zeros(4, 8, dtype=torch.long)
    expected = sum(torch.nn.functional.cross_entropy(logits[b][:, s], targets[:, t])
                   for b in logits for t, s in enumerate(L.TASK_SLICES.values()))
    torch.testing.assert_close(multitask_loss(logits, targets), expected)
    weights = class_weights_from_counts(torch.tensor([[0] * 8, [0] * 8, [0] * 8, [1] * 8]))
    torch.testing.assert_close(weights[0][:2], torch.tensor([4 / (5 * 3), 4 / (5 * 1)]))


def test_weight_grid_and_search_finds_the_informative_branch():
    grid = weight_grid(0.05)
    assert len(grid) == 231 and all(min(w) >= 0 and abs(sum(w) - 1) < 1e-9 for w in grid)
    rng = np.random.default_rng(0)
    labels = np.stack([rng.integers(0, k, 200) for k in L.NUM_CLASSES], 1)
    onehot = np.concatenate([np.eye(k)[labels[:, t]] for t, k in enumerate(L.NUM_CLASSES)], 1)
    noise = lambda: rng.dirichlet(np.ones(3), (200, 8)).reshape(200, -1)[:, :24]   # noqa: E731
    informative = 0.25 * onehot + rng.random((200, 24))      # AUC well above chance, below 1
    probs = {"clinical": noise(), "derm": informative, "fusion": noise()}
    (w_c, w_d, w_fu), score = search_branch_weights(probs, labels)
    derm_alone = averaged_auc(informative, labels)
    assert 0.6 < derm_alone < 0.95
    assert w_d >= 0.8 and w_d > w_c and w_d > w_fu
    assert score >= derm_alone       # the grid contains (0, 1, 0)


def test_training_writes_a_complete_run(trained_run):
    for name in ("config.json", "metrics.jsonl", "best.safetensors", "swa.safetensors", "model.safetensors",
                 "branch_weights.json", "checkpoints/last.json"):
        assert (trained_run / name).is_file(), name
    lines = [json.loads(x) for x in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [0, 1, 2]
    assert all(0 <= x["valid_avg_auc"] <= 1 and x["pairs_per_second"] > 0 for x in lines)
    config = json.loads((trained_run / "config.json").read_text())
    assert config["model"]["img_size"] == 64 and config["train"]["epochs"] == 3
    weights = json.loads((trained_run / "branch_weights.json").read_text())
    model = load_model(trained_run / "model.safetensors")
    assert model.branch_weights.tolist() == pytest.approx([weights["clinical"], weights["derm"], weights["fusion"]])
    assert sum(model.branch_weights.tolist()) == pytest.approx(1.0)


def test_pretrained_run_records_its_source_and_uses_the_encoder_rate(synthetic_release, tmp_path):
    import hashlib

    import timm
    from safetensors.torch import save_file

    from edgederm.models.io import read_metadata
    torch.manual_seed(5)
    source = timm.create_model("resnet10t", pretrained=False).state_dict()
    save_file(source, tmp_path / "resnet10t.safetensors")
    model_cfg, train_cfg = fast_configs(epochs=2, swa_epochs=0, encoder_lr_scale=0.25,
                                        pretrained_derm=str(tmp_path / "resnet10t.safetensors"))
    run = tmp_path / "run"
    train(synthetic_release, run, model_cfg, train_cfg, progress=False)
    digest = hashlib.sha256((tmp_path / "resnet10t.safetensors").read_bytes()).hexdigest()
    initial = json.loads((run / "config.json").read_text())["initial_weights"]
    assert initial["derm"]["source"] == "file" and initial["derm"]["sha256"] == digest
    assert initial["clinical"]["source"] == "random"          # the tiny recipe's "none"
    assert read_metadata(run / "model.safetensors")["initial_weights"] == initial
    epoch = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert epoch["lr"] > 0 and epoch["encoder_lr"] == pytest.approx(0.25 * epoch["lr"])


def test_scoring_valid_less_often_leaves_the_averaged_model_unchanged(trained_run, synthetic_release, tmp_path):
    model_cfg, train_cfg = fast_configs(validate_every=2)
    run = tmp_path / "sparse"
    train(synthetic_release, run, model_cfg, train_cfg, progress=False)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["valid_avg_auc"] is not None for x in lines] == [False, True, True]   # every 2nd epoch, and the last
    sparse, every = load_file(run / "swa.safetensors"), load_file(trained_run / "swa.safetensors")
    for key in every:
        torch.testing.assert_close(sparse[key], every[key], rtol=0, atol=0, msg=key)
    assert json.loads((run / "config.json").read_text())["train"]["validate_every"] == 2
    with pytest.raises(ConfigError, match="validate_every must be >= 1"):
        TrainConfig(validate_every=0)
    with pytest.raises(ConfigError, match="melanoma_sensitivity must be > 0 and <= 1"):
        TrainConfig(melanoma_sensitivity=1.5)


def test_a_checkpoint_from_before_encoder_rates_is_a_one_line_error(trained_run, synthetic_release, tmp_path):
    import shutil
    run = tmp_path / "old"
    shutil.copytree(trained_run, run)
    (run / "model.safetensors").unlink()
    folder = run / "checkpoints" / json.loads((run / "checkpoints" / "last.json").read_text())["dir"]
    state = json.loads((folder / "state.json").read_text())
    groups = state["optimizer"]["param_groups"]     # one group holding every parameter, as older runs saved
    state["optimizer"]["param_groups"] = [{**groups[0], "params": sorted(p for g in groups for p in g["params"])}]
    (folder / "state.json").write_text(json.dumps(state))
    model_cfg, train_cfg = fast_configs()
    with pytest.raises(ConfigError, match=r"state.json: the optimiser state has 1 parameter group\(s\), this "
                                          r"EdgeDerm trains with 2"):
        train(synthetic_release, run, model_cfg, train_cfg, resume=True, progress=False)


def test_resumed_run_matches_the_uninterrupted_one(trained_run, synthetic_release, tmp_path, monkeypatch):
    crash_after_checkpoint(monkeypatch, after_epoch=1)     # killed after the second epoch's checkpoint
    run = tmp_path / "resumed"
    model_cfg, train_cfg = fast_configs()
    with pytest.raises(KeyboardInterrupt):
        train(synthetic_release, run, model_cfg, train_cfg, progress=False)
    assert not (run / "model.safetensors").exists()
    monkeypatch.undo()
    train(synthetic_release, run, model_cfg, train_cfg, resume=True, progress=False)
    epochs = [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2]                                  # same number of epochs, none lost
    resumed, straight = load_file(run / "swa.safetensors"), load_file(trained_run / "swa.safetensors")
    assert resumed.keys() == straight.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=0, msg=key)


def test_run_folder_rules(trained_run, synthetic_release, tmp_path):
    model_cfg, train_cfg = fast_configs()
    with pytest.raises(ConfigError, match="already exists and is not empty"):
        train(synthetic_release, trained_run, model_cfg, train_cfg, progress=False)
    with pytest.raises(ConfigError, match="this run has finished"):
        train(synthetic_release, trained_run, model_cfg, train_cfg, resume=True, progress=False)
    with pytest.raises(ConfigError, match="nothing to resume"):
        train(synthetic_release, tmp_path / "new", model_cfg, train_cfg, resume=True, progress=False)
    with pytest.raises(ConfigError, match="fewer than one batch"):
        train(synthetic_release, tmp_path / "big", model_cfg, TrainConfig(batch_size=500, epochs=1, swa_epochs=0),
              progress=False)
    assert not (tmp_path / "big").exists()
