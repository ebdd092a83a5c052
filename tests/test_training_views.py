"""What a sweep measures must be what the model sees: the training views of random crops are as sharp as the
test view, SWA's BatchNorm pass reads the test view, and a crop_scale the test view does not match is refused;
a config file fills only what it names, and a --preset flag wins over the file's preset key."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgederm.augment import AugmentConfig, augment_image, enlarged_side, policy
from edgederm.cli import app
from edgederm.data.inputs import case_photo
from edgederm.data.release import read_release
from edgederm.data.torch_dataset import PairDataset
from edgederm.errors import ConfigError
from edgederm.models.config import ModelConfig
from edgederm.preprocess import PreprocessConfig, load_input, normalize, read_image, resize_image
from edgederm.presets import get_preset, resolve_config
from edgederm.training.recipe import TrainConfig
from edgederm.training.trainer import Dist, _datasets

# crop-flip-rot90 reduced to its random crop: every training view is then a window of the enlarged photo
CROP_ONLY = policy("crop-flip-rot90", brightness_limit=0.0)
CROP_ONLY = AugmentConfig(**{**CROP_ONLY.__dict__, "p_flip": 0.0, "p_rot90": 0.0, "p_brightness_contrast": 0.0})


def _windows(big: np.ndarray, side: int) -> dict[tuple[int, int], np.ndarray]:
    return {(t, left): big[t:t + side, left:left + side]
            for t in range(big.shape[0] - side + 1) for left in range(big.shape[1] - side + 1)}


def _laplacian(img: np.ndarray) -> float:
    import cv2
    return float(np.abs(cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.CV_32F)).mean())


def test_random_crops_are_windows_of_the_photo_resized_once(synthetic_release):
    """The photo is resized once, from the photo, to the enlarged side; a training view is a window of it, as
    sharp as the test view (resizing the input-sized photo up again lost a third of the detail on real photos)."""
    cases = read_release(synthetic_release).split("train")[:2]
    prep = PreprocessConfig(size=64, crop="zoom")
    ds = PairDataset(cases, prep, augment=CROP_ONLY)
    torch.manual_seed(0)
    for index, case in enumerate(cases):
        photo = read_image(case_photo(case, "dermoscopy"))
        big = resize_image(photo, enlarged_side(64, CROP_ONLY.crop_scale), "area", "none")
        assert big.shape[0] == 72
        windows = _windows(big, 64)
        seen = set()
        for _ in range(6):
            view = ds[index][1].numpy()
            hits = [k for k, w in windows.items() if np.allclose(normalize(w, prep.mean, prep.std), view)]
            assert hits, "a training view is not a window of the photo resized once"
            seen.add(hits[0])
        assert len(seen) > 1                                   # the window moves
        test_view = resize_image(photo, 64, "area", "zoom")
        centre = big[4:68, 4:68]
        assert _laplacian(centre) > 0.9 * _laplacian(test_view)   # as sharp as what the model is tested on
        assert np.abs(centre.astype(int) - test_view.astype(int)).mean() < 6   # and the same part of the photo


def test_augment_image_refuses_a_photo_not_enlarged_for_its_crops():
    img = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="take the photo resized to 72 px, got 64 x 64"):
        augment_image(img, np.random.default_rng(0), CROP_ONLY, 64)
    assert augment_image(np.zeros((72, 72, 3), np.uint8), np.random.default_rng(0), CROP_ONLY, 64).shape == img.shape


def test_swa_batchnorm_set_reads_the_test_view_beside_random_crops(synthetic_release):
    """The trainer's plain train set (SWA's BatchNorm pass) shares the augmented set's cache: it must still
    give the zoom test view, not the whole photo the random crops are taken from."""
    model_cfg, train_cfg = resolve_config("tiny", model_overrides={"img_size": 64, "crop": "zoom"},
                                          train_overrides={"augment_policy": "crop-flip-rot90", "batch_size": 4})
    _, train_set, plain_set, _, _ = _datasets(synthetic_release, model_cfg, train_cfg, Dist())
    assert plain_set.cache is train_set.cache
    torch.manual_seed(0)
    for index in range(3):
        train_set[index]                                         # the augmented set fills the cache first
    for index in range(3):
        clinical, derm, _ = plain_set[index]
        case = plain_set.cases[index]
        for name, tensor in (("clinical", clinical), ("dermoscopy", derm)):
            expected = load_input(case_photo(case, name), model_cfg.preprocess())
            np.testing.assert_allclose(tensor.numpy(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("scale", [1.25, 1.5])
def test_a_crop_scale_the_zoom_view_does_not_match_is_refused(scale, synthetic_release):
    with pytest.raises(ConfigError, match=f"crop_scale {scale} does not match the crop rule zoom"):
        resolve_config("tiny", model_overrides={"crop": "zoom"},
                       train_overrides={"augment_policy": "crop-flip-rot90", "crop_scale": scale})
    cases = read_release(synthetic_release).split("train")[:1]
    with pytest.raises(ConfigError, match="does not match the crop rule zoom"):
        PairDataset(cases, PreprocessConfig(size=64, crop="zoom"), augment=policy("crop-flip-rot90", crop_scale=scale))
    # without the zoom test view, other scales are a plain scale augmentation
    model_cfg, train_cfg = resolve_config("tiny", train_overrides={"augment_policy": "crop-flip-rot90",
                                                                   "crop_scale": scale})
    assert model_cfg.crop == "none" and train_cfg.augmentation().crop_scale == scale


def test_a_model_config_file_fills_missing_keys_with_the_defaults(tmp_path):
    """Written by a person, a config without branch_features means the default (pre_logits); only a config
    saved with weights that predate the key means last_stage."""
    assert ModelConfig.from_dict({}) == ModelConfig()
    written = {"clinical_encoder": "mobilenetv3_small_050", "derm_encoder": "resnet10t", "img_size": 64}
    (tmp_path / "model.json").write_text(json.dumps(written))
    assert ModelConfig.load(tmp_path / "model.json").branch_features == "pre_logits"
    result = CliRunner().invoke(app, ["model", "summary", "--config", str(tmp_path / "model.json"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["config"]["branch_features"] == "pre_logits"
    assert ModelConfig.from_saved(written).branch_features == "last_stage"
    assert ModelConfig.from_saved(ModelConfig().to_dict()) == ModelConfig()


def test_a_preset_flag_wins_over_the_config_files_preset(tmp_path):
    (tmp_path / "run.toml").write_text('preset = "paper"\n[train]\nepochs = 70\n')
    model_cfg, train_cfg = resolve_config("tiny", tmp_path / "run.toml")
    assert model_cfg == get_preset("tiny").model and train_cfg.epochs == 70
    assert train_cfg.lr == get_preset("tiny").recipe.lr
    # without the flag, the file's preset; without either, the default
    assert resolve_config(None, tmp_path / "run.toml")[0] == get_preset("paper").model
    (tmp_path / "plain.toml").write_text('[train]\nepochs = 70\n')
    assert resolve_config(None, tmp_path / "plain.toml")[0] == get_preset("paper").model


def test_train_command_passes_no_preset_unless_given(tmp_path, monkeypatch):
    """`edgederm train` without --preset lets the config file's preset stand."""
    seen = {}

    def fake_train(data, out, model_cfg, train_cfg, resume=False, progress=True):
        seen["model"], seen["train"] = model_cfg, train_cfg
        return out / "model.safetensors"

    import edgederm.training.trainer as trainer
    monkeypatch.setattr(trainer, "train", fake_train)
    (tmp_path / "run.toml").write_text('preset = "tiny"\n')
    args = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--config", str(tmp_path / "run.toml")]
    assert CliRunner().invoke(app, args).exit_code == 0
    assert seen["model"] == get_preset("tiny").model
    assert CliRunner().invoke(app, [*args, "--preset", "edge"]).exit_code == 0
    assert seen["model"] == get_preset("edge").model
    assert isinstance(seen["train"], TrainConfig)


def test_final_weights_last_keeps_the_last_epoch(synthetic_release, tmp_path):
    """Without SWA a run keeps the best valid epoch's weights, or with final_weights "last" the last epoch's
    (a plain fine-tune's choice: valid then picks only the branch weights)."""
    from safetensors.torch import load_file

    from edgederm.training.trainer import train
    from tests.helpers import fast_configs
    model_cfg, train_cfg = fast_configs(epochs=2, swa_epochs=0, final_weights="last")
    run = tmp_path / "last"
    train(synthetic_release, run, model_cfg, train_cfg, progress=False)
    assert json.loads((run / "branch_weights.json").read_text())["weights_of"] == "last"
    final = load_file(str(run / "model.safetensors"))
    last_epoch = json.loads((run / "checkpoints" / "last.json").read_text())
    checkpoint = load_file(str(run / "checkpoints" / last_epoch["dir"] / "model.safetensors"))
    for name, tensor in checkpoint.items():
        if name != "branch_weights":
            assert torch.equal(final[name], tensor), name
    with pytest.raises(ConfigError, match="final_weights applies without SWA only"):
        TrainConfig(epochs=4, swa_epochs=2, final_weights="last")
    with pytest.raises(ConfigError, match="final_weights 'first' is not one of best, last"):
        TrainConfig(final_weights="first")
