"""Training augmentations, with OpenCV: the paper's flip, shift, scale, rotate and
brightness, with the limits of FusionM4Net (Tang et al. 2022), the closest
public recipe: shift-scale-rotate (0.0625, 0.5, 45 degrees), rotate-90, flips,
brightness/contrast. That is the `fusionm4net` policy, every preset's default;
`light` is the gentler one measured against it on the real release (shift and
scale +-6 %, no free rotation, brightness +-15 %): 2.5-3 valid AUC points
worse from epoch 4 on, which is why it is not the default. Every limit can be
set on its own (`policy(name, **limits)`, the recipe's `*_limit` fields).

`crop-flip-rot90` is a plain fine-tuning baseline's recipe, a row of the
sweep grid (docs/training.md, "Recipe sweeps"): the photo resized to `crop_scale` (1.125)
times the input and a random input-sized crop taken, both flips, a random
multiple of 90 degrees, brightness x [0.85, 1.15] (torchvision's ColorJitter
reading of "+-15 %"); nothing else. Its test-time view is the central
1 / crop_scale of the photo: the model's `crop` rule `zoom`, whose factor is
fixed (`preprocess.ZOOM`), so another `crop_scale` under `zoom` is refused
(`check_test_view`). Each photo of a case draws on its own.

The enlarged photo is resized once, from the photo itself (`enlarged_side`;
the dataset caches it), and the crop is a window of it: resizing the
input-sized photo up again would show the model blurred training views
(a third less detail by the mean Laplacian on the real release) and sharp
test views.

Why not albumentations: its maintained successor is AGPL-licensed, and the five
operations below are one warpAffine and two array ops; OpenCV is already a
dependency of every stage.

Works on RGB uint8 arrays after resizing, before normalisation, so the model
sees exactly what `edgederm.preprocess` gives at test time, only moved.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import cv2
import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    p_flip: float = 0.5              # each of horizontal and vertical
    p_rot90: float = 0.5
    p_shift_scale_rotate: float = 0.5
    shift_limit: float = 0.0625      # fraction of the side
    scale_limit: float = 0.5         # scale in [1 - limit, 1 + limit]
    rotate_limit: float = 45.0       # degrees
    p_brightness_contrast: float = 0.5
    brightness_limit: float = 0.2    # added, as a fraction of 255 (brightness_factor: a factor 1 +- limit)
    contrast_limit: float = 0.2      # multiplied around the mean
    brightness_factor: bool = False  # brightness multiplies the pixels instead of adding to them
    crop_scale: float = 1.0          # > 1: resize to crop_scale x the side, then crop a random side x side


POLICIES = {
    "fusionm4net": AugmentConfig(),
    "light": AugmentConfig(shift_limit=0.06, scale_limit=0.06, rotate_limit=0.0, brightness_limit=0.15),
    # p_rot90 0.75 with k in 1..3: each multiple of 90 degrees (0 included) a quarter of the time
    "crop-flip-rot90": AugmentConfig(p_rot90=0.75, p_shift_scale_rotate=0.0, p_brightness_contrast=1.0,
                                     brightness_limit=0.15, contrast_limit=0.0, brightness_factor=True,
                                     crop_scale=1.125),
}
LIMITS = tuple(f.name for f in fields(AugmentConfig))


def policy(name: str, **limits: float | None) -> AugmentConfig:
    """A named policy with some limits changed (None keeps the policy's)."""
    from edgederm.errors import ConfigError
    if name not in POLICIES:
        raise ConfigError(f"augmentation policy {name!r} is not one of {', '.join(POLICIES)}")
    unknown = sorted(set(limits) - set(LIMITS))
    if unknown:
        raise ConfigError(f"augmentation: unknown limit(s) {', '.join(unknown)} (known: {', '.join(LIMITS)})")
    cfg = replace(POLICIES[name], **{k: v for k, v in limits.items() if v is not None})
    if cfg.crop_scale < 1:
        raise ConfigError(f"augmentation: crop_scale must be >= 1 (the photo is enlarged, then cropped), "
                          f"got {cfg.crop_scale}")
    return cfg


def enlarged_side(size: int, scale: float) -> int:
    """The side a photo is resized to before random `size` x `size` crops are taken from it."""
    return int(round(size * scale))


def check_test_view(crop: str, cfg: AugmentConfig | None) -> None:
    """Refuse training views that the model's test view (its `crop` rule) does not match: the `zoom` view is
    the centre of random crops of the photo enlarged `preprocess.ZOOM` times, no other factor."""
    from edgederm.errors import ConfigError
    from edgederm.preprocess import ZOOM
    if crop == "zoom" and cfg is not None and cfg.crop_scale > 1 and cfg.crop_scale != ZOOM:
        raise ConfigError(f"augmentation crop_scale {cfg.crop_scale} does not match the crop rule zoom, whose "
                          f"test view is the central 1/{ZOOM} of the photo: use crop_scale {ZOOM}, or crop none")


def random_crop(img: np.ndarray, rng: np.random.Generator, side: int) -> np.ndarray:
    """A random `side` x `side` window of an enlarged square photo, taken as it is (no resampling)."""
    if img.shape[0] <= side:
        return img
    top, left = (int(v) for v in rng.integers(0, img.shape[0] - side + 1, size=2))
    return img[top:top + side, left:left + side]


def augment_image(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig = AugmentConfig(),
                  size: int | None = None) -> np.ndarray:
    """One random augmentation of an RGB uint8 image, square and already resized: to `size` (the model input;
    default: the image's side), or, under random crops (crop_scale > 1), to `enlarged_side(size, crop_scale)`."""
    size = size or img.shape[0]
    if cfg.crop_scale > 1:
        expected = enlarged_side(size, cfg.crop_scale)
        if img.shape[0] != expected or img.shape[1] != expected:
            raise ValueError(f"random crops of {size} px take the photo resized to {expected} px, "
                             f"got {img.shape[1]} x {img.shape[0]}")
        img = random_crop(img, rng, size)
    if rng.random() < cfg.p_flip:
        img = img[:, ::-1]
    if rng.random() < cfg.p_flip:
        img = img[::-1, :]
    if rng.random() < cfg.p_rot90:
        img = np.rot90(img, k=int(rng.integers(1, 4)))
    if rng.random() < cfg.p_shift_scale_rotate:
        h, w = img.shape[:2]
        angle = rng.uniform(-cfg.rotate_limit, cfg.rotate_limit)
        scale = rng.uniform(1.0 - cfg.scale_limit, 1.0 + cfg.scale_limit)
        matrix = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, scale)
        matrix[:, 2] += rng.uniform(-cfg.shift_limit, cfg.shift_limit, size=2) * (w, h)
        img = cv2.warpAffine(np.ascontiguousarray(img), matrix, (w, h), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REFLECT_101)
    if rng.random() < cfg.p_brightness_contrast:
        if cfg.brightness_factor:
            factor = 1.0 + rng.uniform(-cfg.brightness_limit, cfg.brightness_limit)
            img = np.clip(img.astype(np.float32) * factor, 0, 255).astype(np.uint8)
        else:
            alpha = 1.0 + rng.uniform(-cfg.contrast_limit, cfg.contrast_limit)
            beta = rng.uniform(-cfg.brightness_limit, cfg.brightness_limit) * 255.0
            mean = img.mean()
            img = np.clip((img.astype(np.float32) - mean) * alpha + mean + beta, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img)
