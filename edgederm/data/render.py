"""Procedural drawing of one synthetic case: a dermoscopy photo and a clinical photo.

The lesion is drawn once, as a texture plus one translucent layer per
dermoscopic criterion present (network grid, radial streaks, blotches,
regression areas, dots and globules, blue-white veil, vessels). The
dermoscopy view composites the layers at full strength, magnified, inside the
dark circular vignette of a contact dermatoscope. The clinical view composites
them at a fraction of that strength, shrinks the lesion into a wide field of
skin and blurs it, as a phone camera would: every criterion is visible in the
dermoscopy view and weaker in the clinical one.

The diagnosis shows through shape asymmetry, size, colours and a few
diagnosis-specific structures (BCC ovoid nests, SK milia-like cysts,
vascular lacunae), so it is learnable beyond the checklist criteria.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Mapping

import cv2
import numpy as np

from edgederm import labels as L

WIDTH, HEIGHT = 768, 512          # the real release's image size
PATCH = 480                        # lesion canvas side (lesion radius <= 190, streaks beyond)
CLINICAL_STRENGTH = 0.3            # criteria opacity in the clinical view relative to dermoscopy

Layer = tuple[np.ndarray, tuple[float, float, float], float]   # mask in [0,1], RGB colour, opacity

DIAGNOSIS_LOOK = {   # RGB base colour, colour spread, radius range, border irregularity
    "BCC": ((205, 145, 140), 18, (115, 165), 0.10),
    "NEV": ((150, 98, 66), 22, (120, 165), 0.04),
    "MEL": ((105, 62, 45), 25, (150, 190), 0.15),
    "MISC": ((175, 120, 95), 25, (100, 150), 0.07),
    "SK": ((165, 125, 85), 18, (130, 175), 0.09),
}


@dataclass
class _Lesion:
    rng: np.random.Generator
    cx: float
    cy: float
    radius: float
    mask: np.ndarray      # float32 PATCH x PATCH, soft lesion mask
    inner: np.ndarray     # float32, lesion mask fading toward the border


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]."""
    small = rng.uniform(-1, 1, size=(cells, cells)).astype(np.float32)
    return cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC).clip(-1, 1)


def _blob(rng, shape, cx, cy, radius, irregularity, harmonics=6, aspect=1.0) -> np.ndarray:
    """A filled star-shaped blob with a Fourier-perturbed border, uint8 0/255."""
    theta = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    r = np.ones_like(theta)
    for k in range(2, 2 + harmonics):
        r += irregularity * rng.normal() / np.sqrt(k - 1) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    r = radius * np.clip(r, 0.4, 1.6)
    rot = rng.uniform(0, np.pi)
    x, y = r * np.cos(theta) * aspect, r * np.sin(theta)
    pts = np.stack([cx + x * np.cos(rot) - y * np.sin(rot), cy + x * np.sin(rot) + y * np.cos(rot)], 1)
    out = np.zeros(shape, np.uint8)
    cv2.fillPoly(out, [np.round(pts * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    return out


def _soft(mask_u8: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    m = mask_u8.astype(np.float32) / 255.0
    return cv2.GaussianBlur(m, (0, 0), sigma) if sigma > 0 else m


def _random_points_in(les: _Lesion, n: int, max_r: float = 0.85, min_r: float = 0.0) -> np.ndarray:
    rng = les.rng
    r = les.radius * np.sqrt(rng.uniform(min_r ** 2, max_r ** 2, n))
    a = rng.uniform(0, 2 * np.pi, n)
    return np.stack([les.cx + r * np.cos(a), les.cy + r * np.sin(a)], 1)


# --- the seven criteria ---------------------------------------------------

def _pigment_network(les: _Lesion, cls: str) -> list[Layer]:
    if cls == "ABS":
        return []
    rng, out = les.rng, np.zeros((PATCH, PATCH), np.uint8)
    typical = cls == "TYP"
    step = les.radius / (9 if typical else 7)
    n = int(2 * les.radius / step) + 3
    gy, gx = np.mgrid[0:n, 0:n].astype(np.float32)
    jitter = 0.05 if typical else 0.35
    pts = np.stack([gx, gy], -1) * step + rng.normal(0, jitter * step, (n, n, 2))
    rot = rng.uniform(0, np.pi / 2)
    c, s = np.cos(rot), np.sin(rot)
    pts -= (n - 1) * step / 2
    pts = np.stack([les.cx + pts[..., 0] * c - pts[..., 1] * s, les.cy + pts[..., 0] * s + pts[..., 1] * c], -1)
    for i in range(n):
        for j in range(n):
            for di, dj in ((0, 1), (1, 0)):
                if i + di >= n or j + dj >= n or (not typical and rng.random() < 0.3):
                    continue
                width = 2 if typical else int(rng.integers(2, 6))
                p, q = pts[i, j], pts[i + di, j + dj]
                cv2.line(out, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), 255, width, cv2.LINE_AA)
    mask = _soft(out, 0.7) * les.inner
    if typical:
        return [(mask, (70, 40, 28), 0.75)]
    # Atypical network: darker, thicker, and only over part of the lesion.
    half = (_smooth_noise(rng, mask.shape, 3) > -0.2).astype(np.float32)
    return [(mask * cv2.GaussianBlur(half, (0, 0), 8), (35, 22, 18), 0.95)]


def _streaks(les: _Lesion, cls: str) -> list[Layer]:
    if cls == "ABS":
        return []
    rng, out = les.rng, np.zeros((PATCH, PATCH), np.uint8)
    if cls == "REG":   # evenly spaced all around the border
        angles = np.linspace(0, 2 * np.pi, int(rng.integers(28, 40)), endpoint=False) + rng.uniform(0, 1)
        lengths = np.full(len(angles), rng.uniform(22, 30))
        tilt = np.zeros(len(angles))
    else:              # clustered in one or two sectors, uneven length and angle
        centres = rng.uniform(0, 2 * np.pi, int(rng.integers(1, 3)))
        angles = np.concatenate([c + rng.normal(0, 0.35, int(rng.integers(10, 18))) for c in centres])
        lengths = rng.uniform(15, 50, len(angles))
        tilt = rng.normal(0, 0.3, len(angles))
    for a, length, t in zip(angles, lengths, tilt):
        r0 = les.radius * 0.8
        x0, y0 = les.cx + r0 * np.cos(a), les.cy + r0 * np.sin(a)
        x1, y1 = x0 + (length + 0.2 * les.radius) * np.cos(a + t), y0 + (length + 0.2 * les.radius) * np.sin(a + t)
        cv2.line(out, (int(x0), int(y0)), (int(x1), int(y1)), 255, 3, cv2.LINE_AA)
        cv2.circle(out, (int(x1), int(y1)), 3, 255, -1, cv2.LINE_AA)
    return [(_soft(out, 0.8), (55, 32, 25), 0.9)]


def _pigmentation(les: _Lesion, cls: str, raw: str) -> list[Layer]:
    if cls == "ABS":
        return []
    rng = les.rng
    localized = raw.startswith("localized")
    if cls == "REG":   # one symmetric, centred, smooth darker area
        r = les.radius * (0.35 if localized else 0.7)
        out = np.zeros((PATCH, PATCH), np.uint8)
        cv2.circle(out, (int(les.cx), int(les.cy)), int(r), 255, -1, cv2.LINE_AA)
        return [(_soft(out, r / 4) * les.mask, (72, 44, 32), 0.8)]
    # irregular: off-centre, asymmetric, near-black blotches
    out = np.zeros((PATCH, PATCH), np.uint8)
    for cx, cy in _random_points_in(les, 1 if localized else int(rng.integers(2, 4)), 0.6, 0.2):
        out |= _blob(rng, out.shape, cx, cy, les.radius * rng.uniform(0.18, 0.35), 0.35)
    return [(_soft(out, 3) * les.mask, (38, 24, 22), 0.9)]


def _regression(les: _Lesion, cls: str, raw: str) -> list[Layer]:
    if cls == "ABS":
        return []
    rng, layers = les.rng, []
    if raw in ("white areas", "combinations", "present"):
        out = np.zeros((PATCH, PATCH), np.uint8)
        for cx, cy in _random_points_in(les, int(rng.integers(1, 3)), 0.6):
            out |= _blob(rng, out.shape, cx, cy, les.radius * rng.uniform(0.15, 0.28), 0.3)
        layers.append((_soft(out, 4) * les.mask, (238, 232, 228), 0.85))
    if raw in ("blue areas", "combinations"):
        out = np.zeros((PATCH, PATCH), np.uint8)
        cx, cy = _random_points_in(les, 1, 0.5)[0]
        for x, y in rng.normal((cx, cy), les.radius * 0.18, (160, 2)):
            cv2.circle(out, (int(x), int(y)), int(rng.integers(1, 3)), 255, -1, cv2.LINE_AA)
        layers.append((_soft(out, 0.6) * les.mask, (95, 105, 140), 0.9))
    return layers


def _dots_globules(les: _Lesion, cls: str) -> list[Layer]:
    if cls == "ABS":
        return []
    rng, out = les.rng, np.zeros((PATCH, PATCH), np.uint8)
    if cls == "REG":   # same size, evenly spread over the centre
        size = int(rng.integers(4, 6))
        for x, y in _random_points_in(les, int(rng.integers(25, 40)), 0.6):
            cv2.circle(out, (int(x), int(y)), size, 255, -1, cv2.LINE_AA)
        return [(_soft(out, 0.6), (80, 48, 35), 0.9)]
    for x, y in _random_points_in(les, int(rng.integers(20, 45)), 0.95, 0.45):  # peripheral, varied
        cv2.circle(out, (int(x), int(y)), int(rng.integers(2, 10)), 255, -1, cv2.LINE_AA)
    return [(_soft(out, 0.6), (28, 20, 18), 0.95)]


def _blue_white_veil(les: _Lesion, cls: str) -> list[Layer]:
    if cls == "ABS":
        return []
    rng = les.rng
    cx, cy = _random_points_in(les, 1, 0.4)[0]
    out = _blob(rng, (PATCH, PATCH), cx, cy, les.radius * rng.uniform(0.35, 0.55), 0.25)
    haze = _soft(out, 8) * les.mask * (0.85 + 0.15 * _smooth_noise(rng, out.shape, 6))
    return [(haze, (120, 138, 185), 0.85), (haze * 0.5, (225, 230, 240), 0.5)]


def _vessel_tree(out, rng, x, y, angle, length, width, depth):
    x1, y1 = x + length * np.cos(angle), y + length * np.sin(angle)
    cv2.line(out, (int(x), int(y)), (int(x1), int(y1)), 255, max(1, int(width)), cv2.LINE_AA)
    if depth > 0:
        for turn in (-0.5, 0.5):
            _vessel_tree(out, rng, x1, y1, angle + turn + rng.normal(0, 0.2), length * 0.7, width * 0.7, depth - 1)


def _vessels(les: _Lesion, cls: str, raw: str) -> list[Layer]:
    if cls == "ABS":
        return []
    rng, out = les.rng, np.zeros((PATCH, PATCH), np.uint8)
    if raw in ("arborizing", "regular"):
        for x, y in _random_points_in(les, int(rng.integers(2, 4)), 0.5):
            _vessel_tree(out, rng, x, y, rng.uniform(0, 2 * np.pi), les.radius * 0.3, 5, 3)
    elif raw == "comma":
        for x, y in _random_points_in(les, int(rng.integers(12, 20)), 0.8):
            a = rng.uniform(0, 360)
            cv2.ellipse(out, (int(x), int(y)), (9, 5), a, 0, 160, 255, 2, cv2.LINE_AA)
    elif raw in ("hairpin", "within regression"):
        for x, y in _random_points_in(les, int(rng.integers(8, 14)), 0.7):
            a = rng.uniform(0, 360)
            cv2.ellipse(out, (int(x), int(y)), (4, 12), a, 0, 360, 255, 2, cv2.LINE_AA)
    elif raw == "wreath":
        for a in np.linspace(0, 2 * np.pi, 14, endpoint=False):
            x, y = les.cx + 0.45 * les.radius * np.cos(a), les.cy + 0.45 * les.radius * np.sin(a)
            cv2.ellipse(out, (int(x), int(y)), (10, 4), np.degrees(a), 0, 360, 255, 2, cv2.LINE_AA)
    elif raw in ("dotted", "dotted/irregular"):
        for x, y in _random_points_in(les, int(rng.integers(60, 110)), 0.9):
            cv2.circle(out, (int(x), int(y)), 2, 255, -1, cv2.LINE_AA)
    else:  # linear irregular: tortuous polylines of uneven calibre
        for x, y in _random_points_in(les, int(rng.integers(4, 7)), 0.7):
            steps = np.cumsum(rng.normal(0, 9, (10, 2)), 0) + (x, y)
            cv2.polylines(out, [steps.astype(np.int32)], False, 255, int(rng.integers(2, 4)), cv2.LINE_AA)
    return [(_soft(out, 0.6) * les.mask, (190, 30, 45), 0.9)]


# --- diagnosis-specific structures -----------------------------------------

def _diagnosis_structures(les: _Lesion, diagnosis: str, raw_diagnosis: str) -> list[Layer]:
    rng, out = les.rng, np.zeros((PATCH, PATCH), np.uint8)
    if diagnosis == "BCC":      # blue-grey ovoid nests
        for x, y in _random_points_in(les, int(rng.integers(3, 7)), 0.7):
            cv2.ellipse(out, (int(x), int(y)), (int(rng.integers(8, 16)), int(rng.integers(5, 9))),
                        rng.uniform(0, 180), 0, 360, 255, -1, cv2.LINE_AA)
        return [(_soft(out, 2), (85, 95, 120), 0.8)]
    if diagnosis == "SK":       # milia-like cysts
        for x, y in _random_points_in(les, int(rng.integers(8, 16)), 0.8):
            cv2.circle(out, (int(x), int(y)), int(rng.integers(3, 6)), 255, -1, cv2.LINE_AA)
        return [(_soft(out, 1.2), (245, 240, 215), 0.8)]
    if diagnosis == "MEL":      # multicomponent: a second colour zone
        cx, cy = _random_points_in(les, 1, 0.5)[0]
        out = _blob(rng, out.shape, cx, cy, les.radius * 0.45, 0.3)
        return [(_soft(out, 6) * les.mask, (140, 70, 60), 0.6)]
    if raw_diagnosis == "vascular lesion":   # red-purple lacunae
        for x, y in _random_points_in(les, int(rng.integers(5, 10)), 0.7):
            cv2.circle(out, (int(x), int(y)), int(rng.integers(10, 22)), 255, -1, cv2.LINE_AA)
        return [(_soft(out, 2) * les.mask, (150, 35, 70), 0.85)]
    if raw_diagnosis == "dermatofibroma":    # central white patch
        out = _blob(rng, out.shape, les.cx, les.cy, les.radius * 0.35, 0.2)
        return [(_soft(out, 5) * les.mask, (235, 220, 210), 0.8)]
    return []


# --- composition -------------------------------------------------------------

def _composite(texture: np.ndarray, layers: list[Layer], strength: float) -> tuple[np.ndarray, np.ndarray]:
    """Blend layers onto the lesion texture; also return the union alpha (streaks reach past the border)."""
    img, extra = texture.copy(), np.zeros(texture.shape[:2], np.float32)
    for mask, colour, opacity in layers:
        x, y, w, h = cv2.boundingRect((mask > 1e-3).astype(np.uint8))   # blend only where the layer is
        if w == 0:
            continue
        a = mask[y:y + h, x:x + w] * (opacity * strength)
        region = img[y:y + h, x:x + w]
        target = np.asarray(colour, np.float32)
        _per_channel(region, lambda c: region[..., c] + (target[c] - region[..., c]) * a)
        np.maximum(extra[y:y + h, x:x + w], a, out=extra[y:y + h, x:x + w])
    return img, extra


def _per_channel(out: np.ndarray, fn) -> np.ndarray:
    """out[..., c] = fn(c) for the three channels. numpy broadcasts over a trailing axis of 3 slowly
    (~3x the time of three plane operations); the arithmetic, and so every pixel, is the same."""
    for c in range(3):
        out[..., c] = fn(c)
    return out


def _skin(rng, shape, base) -> np.ndarray:
    """Skin of one tone (brightness varies, hue barely), with soft shading and grain."""
    colour = np.asarray(base, np.float32) * rng.uniform(0.82, 1.08) + rng.normal(0, 4, 3)
    shade = 1 + 0.06 * _smooth_noise(rng, shape, 5) + 0.015 * rng.standard_normal(shape, dtype=np.float32)
    colour = colour.astype(np.float32)
    return _per_channel(np.empty((*shape, 3), np.float32), lambda c: shade * colour[c])


@lru_cache(maxsize=1)
def _distance_from_centre() -> np.ndarray:
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    return np.hypot(xx - WIDTH / 2, yy - HEIGHT / 2)


def _paste(background: np.ndarray, patch: np.ndarray, alpha: np.ndarray, x0: int, y0: int) -> None:
    h, w = alpha.shape
    region = background[y0:y0 + h, x0:x0 + w]
    keep = 1 - alpha
    _per_channel(region, lambda c: region[..., c] * keep + patch[..., c] * alpha)


# One drawing, layer by layer in a fixed order: split up, the order of the random draws that keeps every synthetic
# release identical across versions would be scattered over several functions.
def render_case(labels: Mapping[str, str], raw: Mapping[str, str], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw one case. `labels` maps task key -> class abbreviation, `raw` maps
    task key -> the raw meta.csv string. Returns (clinical, dermoscopy) RGB uint8,
    each HEIGHT x WIDTH x 3."""
    # Independent streams: the lesion, each criterion, and each view draw from
    # their own generator, so toggling one criterion changes only its layer.
    lesion_rng, derm_rng, clinical_rng, *task_rngs = rng.spawn(3 + len(L.TASK_KEYS))
    streams = dict(zip(L.TASK_KEYS, task_rngs))
    diagnosis = labels["DIAG"]
    base, spread, radius_range, irregularity = DIAGNOSIS_LOOK[diagnosis]
    if raw["DIAG"] == "blue nevus":
        base = (90, 100, 130)
    radius = lesion_rng.uniform(*radius_range)
    cx, cy = PATCH / 2 + lesion_rng.normal(0, 6, 2)
    shape_mask = _blob(lesion_rng, (PATCH, PATCH), cx, cy, radius, irregularity,
                       aspect=lesion_rng.uniform(0.85, 1.0) if diagnosis != "MEL" else lesion_rng.uniform(0.65, 1.0))
    mask = _soft(shape_mask, 2.5 if diagnosis != "MEL" else 1.0)
    dist = cv2.distanceTransform(shape_mask, cv2.DIST_L2, 5)
    inner = np.clip(dist / (0.35 * radius), 0, 1).astype(np.float32)
    les = _Lesion(lesion_rng, cx, cy, radius, mask, inner)

    colour = np.asarray(base, np.float32) + lesion_rng.normal(0, spread, 3)
    variation = 1 + 0.12 * _smooth_noise(lesion_rng, (PATCH, PATCH), 6)
    centre_dark = 1 - 0.12 * np.clip(inner, 0, 1)           # lesions darken toward the centre
    texture = np.clip(colour * (variation * centre_dark)[..., None], 0, 255)

    def on(task: str) -> _Lesion:
        return replace(les, rng=streams[task])

    layers = (_diagnosis_structures(on("DIAG"), diagnosis, raw["DIAG"])
              + _pigmentation(on("PIG"), labels["PIG"], raw["PIG"])
              + _pigment_network(on("PN"), labels["PN"])
              + _regression(on("RS"), labels["RS"], raw["RS"])
              + _blue_white_veil(on("BWV"), labels["BWV"])
              + _dots_globules(on("DaG"), labels["DaG"])
              + _streaks(on("STR"), labels["STR"])
              + _vessels(on("VS"), labels["VS"], raw["VS"]))

    # Dermoscopy: magnified, full-strength criteria, dark circular vignette.
    derm_lesion, derm_extra = _composite(texture, layers, 1.0)
    derm = _skin(derm_rng, (HEIGHT, WIDTH), (232, 190, 170))
    scale = derm_rng.uniform(0.95, 1.05)
    size = int(PATCH * scale)
    patch = cv2.resize(derm_lesion, (size, size))
    alpha = cv2.resize(np.maximum(mask, derm_extra), (size, size))
    x0 = int(np.clip(WIDTH / 2 - size / 2 + derm_rng.normal(0, 15), 0, WIDTH - size))
    y0 = (HEIGHT - size) // 2    # PATCH * 1.05 < HEIGHT: the canvas always fits
    _paste(derm, patch, alpha, x0, y0)
    vignette = np.clip((derm_rng.uniform(290, 320) - _distance_from_centre()) / 12, 0, 1)
    dark = 8 * (1 - vignette)
    derm = _per_channel(derm, lambda c: derm[..., c] * vignette + dark)

    # Clinical: wide field, weak criteria, small and soft.
    clin_lesion, clin_extra = _composite(texture, layers, CLINICAL_STRENGTH)
    clinical = _skin(clinical_rng, (HEIGHT, WIDTH), (205, 158, 135))
    gradient = (1 + 0.15 * np.linspace(-1, 1, WIDTH, dtype=np.float32) * clinical_rng.choice((-1, 1)))[None, :]
    clinical = _per_channel(clinical, lambda c: clinical[..., c] * gradient)
    size = int(PATCH * clinical_rng.uniform(0.3, 0.42))
    patch = cv2.GaussianBlur(cv2.resize(clin_lesion, (size, size), interpolation=cv2.INTER_AREA), (0, 0), 1.2)
    alpha = cv2.GaussianBlur(cv2.resize(np.maximum(mask, clin_extra), (size, size), interpolation=cv2.INTER_AREA), (0, 0), 1.2)
    x0 = int(clinical_rng.uniform(0.2, 0.8) * (WIDTH - size))
    y0 = int(clinical_rng.uniform(0.2, 0.8) * (HEIGHT - size))
    _paste(clinical, patch, alpha, x0, y0)
    for _ in range(int(clinical_rng.integers(0, 4))):   # a few hairs
        pts = np.cumsum(clinical_rng.normal(0, 12, (12, 2)), 0) + clinical_rng.uniform((0, 0), (WIDTH, HEIGHT))
        cv2.polylines(clinical, [pts.astype(np.int32)], False, (60, 45, 40), 1, cv2.LINE_AA)

    return (np.clip(clinical, 0, 255).astype(np.uint8), np.clip(derm, 0, 255).astype(np.uint8))
