"""The plain fine-tuning baseline's recipe pieces as EdgeDerm knobs: the crop-flip-rot90 augmentation, its
test-time view (crop rule `zoom`) and the one-cycle schedule."""
import numpy as np
import pytest
import torch

from edgederm.augment import AugmentConfig, augment_image, policy, random_crop
from edgederm.data.torch_dataset import PairDataset
from edgederm.errors import ConfigError
from edgederm.preprocess import ZOOM, PreprocessConfig, resize_image
from edgederm.training.recipe import ONECYCLE_DIV, ONECYCLE_FINAL_DIV, TrainConfig


def _gradient_image(side: int = 64) -> np.ndarray:
    """Every pixel distinct, so a crop can be located in the original."""
    y, x = np.mgrid[0:side, 0:side]
    return np.stack([x * 3, y * 3, x + y], axis=-1).astype(np.uint8)    # no wrap-around up to 85 px


def test_random_crop_stays_inside_the_enlarged_photo_and_covers_its_edges():
    big = _gradient_image(72)                  # the photo resized once to 1.125 x 64
    offsets = set()
    for seed in range(200):
        crop = random_crop(big, np.random.default_rng(seed), 64)
        assert crop.shape == (64, 64, 3)
        # the crop is a window of the enlarged photo (no resampling), located by its top-left pixel
        top, left = int(crop[0, 0, 1]) // 3, int(crop[0, 0, 0]) // 3
        np.testing.assert_array_equal(big[top:top + 64, left:left + 64], crop)
        offsets.add((top, left))
    tops, lefts = {t for t, _ in offsets}, {left for _, left in offsets}
    assert min(tops) == 0 and max(tops) == 72 - 64      # both edges are reached, never passed
    assert min(lefts) == 0 and max(lefts) == 72 - 64


def test_crop_flip_rot90_draws_repeat_for_a_seed_and_use_only_its_operations():
    cfg = policy("crop-flip-rot90")
    assert (cfg.crop_scale, cfg.brightness_limit, cfg.p_shift_scale_rotate, cfg.contrast_limit) == (1.125, 0.15, 0, 0)
    img = _gradient_image(72)
    a = augment_image(img, np.random.default_rng(11), cfg, 64)
    np.testing.assert_array_equal(a, augment_image(img, np.random.default_rng(11), cfg, 64))
    assert not np.array_equal(a, augment_image(img, np.random.default_rng(12), cfg, 64))
    # With brightness off, every draw is a crop of the enlarged photo turned by a multiple of 90 degrees
    # and flipped: the same set of pixel values as some crop, never a resampled one.
    plain = policy("crop-flip-rot90", brightness_limit=0.0)
    rotations = set()
    for seed in range(40):
        out = augment_image(img, np.random.default_rng(seed), plain, 64)
        rng = np.random.default_rng(seed)
        crop = random_crop(img, rng, 64)
        views = {}
        for k in range(4):
            for flip_h in (False, True):
                for flip_v in (False, True):
                    v = crop[:, ::-1] if flip_h else crop
                    v = v[::-1] if flip_v else v
                    views[(k, flip_h, flip_v)] = np.rot90(v, k)
        matches = [key for key, v in views.items() if np.array_equal(v, out)]
        assert matches, seed
        rotations.add(all(k % 2 for k, _, _ in matches))   # only a quarter turn explains it (180 = both flips)
    assert rotations == {True, False}
    # brightness is a factor within +-15 %
    flat = np.full((72, 72, 3), 100, np.uint8)
    values = {int(augment_image(flat, np.random.default_rng(s), cfg, 64)[0, 0, 0]) for s in range(100)}
    assert min(values) >= 85 and max(values) <= 115 and len(values) > 10


def test_the_two_photos_of_a_case_draw_independently(synthetic_release):
    from edgederm.data.release import read_release
    cases = read_release(synthetic_release).split("train")[:1]
    prep = PreprocessConfig(size=64)
    flips_only = AugmentConfig(p_rot90=0.0, p_shift_scale_rotate=0.0, p_brightness_contrast=0.0)
    ds = PairDataset(cases, prep, augment=flips_only)
    plain = PairDataset(cases, prep)
    torch.manual_seed(0)
    changes = set()
    for _ in range(12):
        clinical, derm, _ = ds[0]
        c0, d0, _ = plain[0]
        changes.add((bool(torch.equal(clinical, c0)), bool(torch.equal(derm, d0))))
    assert len(changes) > 1        # one photo kept while the other moved: not one draw shared by both


def test_zoom_is_the_central_part_the_random_crops_are_centred_on():
    img = np.random.default_rng(0).integers(0, 255, (450, 600, 3), dtype=np.uint8)
    zoomed = resize_image(img, 64, "area", "zoom")
    h, w = int(round(450 / ZOOM)), int(round(600 / ZOOM))
    expected = resize_image(img[(450 - h) // 2:(450 - h) // 2 + h, (600 - w) // 2:(600 - w) // 2 + w], 64, "area")
    np.testing.assert_array_equal(zoomed, expected)
    # training with random crops reads the whole photo, then crops: zoom is not applied twice
    ds = PairDataset([], PreprocessConfig(size=64, crop="zoom"), augment=policy("crop-flip-rot90"))
    assert ds._crop == "none"
    assert PairDataset([], PreprocessConfig(size=64, crop="zoom"))._crop == "zoom"


def test_crop_scale_below_one_is_refused():
    with pytest.raises(ConfigError, match="crop_scale must be >= 1"):
        TrainConfig(augment_policy="crop-flip-rot90", crop_scale=0.9)


@pytest.mark.parametrize("epochs, swa, warmup", [(25, 0, 0), (30, 5, 2), (12, 0, 3)])
def test_onecycle_is_torchs_one_cycle_per_epoch_with_its_peak_and_end_rates(epochs, swa, warmup):
    cfg = TrainConfig(epochs=epochs, swa_epochs=swa, swa_lr=1e-5, lr=3e-4, warmup_epochs=warmup, schedule="onecycle")
    cycle = epochs - swa
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=3e-4)
    reference = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-4, total_steps=cycle,
                                                    pct_start=warmup / cycle if warmup else 0.1)
    expected = []
    for _ in range(cycle):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        reference.step()
    ours = [3e-4 * cfg.lr_factor(e) for e in range(epochs)]
    np.testing.assert_allclose(ours[:cycle], expected, rtol=1e-9, atol=1e-15)
    assert max(ours[:cycle]) == pytest.approx(3e-4, rel=2e-3)                  # the peak is lr
    assert ours[cycle - 1] == pytest.approx(3e-4 / ONECYCLE_DIV / ONECYCLE_FINAL_DIV)   # the end
    assert ours[0] == pytest.approx(3e-4 / ONECYCLE_DIV) or warmup == 0 and cycle * 0.1 <= 1
    assert all(v == pytest.approx(1e-5) for v in ours[cycle:])                  # then SWA's constant rate
