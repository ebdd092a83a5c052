"""Image reading and preprocessing: numpy and OpenCV only.

Training, evaluation, export calibration and every runtime call these same
functions, so the arrays a deployed model sees are the arrays it was trained
on. No torch here: this module runs on a Jetson that has numpy and OpenCV.

What we accept (a phone or dermatoscope export can be any of these):
- 8-bit RGB in any format OpenCV decodes; EXIF orientation is applied;
- RGBA: the alpha channel is dropped;
- 16-bit: scaled to 8 bits (x / 257).
What we refuse, with an ImageError naming the file:
- missing, empty or undecodable files, truncated JPEG/PNG;
- images over MAX_PIXELS, refused from the header before anything is decoded;
- grayscale images: colour carries the diagnosis (blue-white veil, pigment
  colours), and a grey photo is almost always the wrong file;
- photos smaller than the model's input on their short side (a 2 x 2 thumbnail,
  a 100-pixel crop for a 224-pixel model): upscaled, they would show the model
  detail that is not there, and it would still answer. Refused when a model
  input is made (`preprocess_image`), since the floor is the model's own size.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from edgederm.errors import ConfigError, ImageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

INTERPOLATIONS = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}
# What of the photo is kept before resizing: "none" = all of it (the aspect ratio is squashed; the lesion
# keeps its whole context), "center" = the central square (aspect kept, the long side's edges dropped),
# "zoom" = the central 1 / ZOOM of each side: the test-time view of a model trained on random crops of the
# photo enlarged ZOOM times (augmentation policy crop-flip-rot90; a plain fine-tuning baseline's centre crop).
CROPS = ("none", "center", "zoom")
ZOOM = 1.125
# How a JPEG is decoded: "full" = every pixel; "reduced" = libjpeg's DCT-domain scaling to 1/2, 1/4 or 1/8,
# the largest that still leaves the short side >= REDUCED_MARGIN x the model input (never below).
# A 12-MP phone photo then decodes at 1/4 for a 224-px model, about 3x faster than full + resize.
DECODES = ("full", "reduced")
REDUCED_MARGIN = 2

# ANYDEPTH keeps 16-bit data so we can scale it ourselves; ANYCOLOR keeps
# grayscale as one channel so we can refuse it. Unlike IMREAD_UNCHANGED this
# still applies EXIF orientation, which phone photos rely on.
_DECODE_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR


@dataclass(frozen=True)
class PreprocessConfig:
    """How a photo becomes a model input. Recorded in every bundle manifest."""

    size: int = 224
    resize: str = "area"            # key of INTERPOLATIONS
    crop: str = "none"              # key of CROPS: what is resized to size x size
    decode: str = "full"            # key of DECODES
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: str = "RGB"
    layout: str = "NCHW"
    dtype: str = "float32"

    def __post_init__(self):
        if self.resize not in INTERPOLATIONS:
            raise ConfigError(f"preprocessing: unknown resize rule {self.resize!r} "
                              f"(choose from {', '.join(INTERPOLATIONS)})")
        if self.crop not in CROPS:
            raise ConfigError(f"preprocessing: unknown crop rule {self.crop!r} (choose from {', '.join(CROPS)})")
        if self.decode not in DECODES:
            raise ConfigError(f"preprocessing: unknown decode rule {self.decode!r} (choose from {', '.join(DECODES)})")

    @property
    def min_decoded_side(self) -> int | None:
        """The short side a reduced decode must keep; None: decode in full."""
        return REDUCED_MARGIN * self.size if self.decode == "reduced" else None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessConfig":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"preprocessing: unknown keys {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


# Refuse before decoding: a 20000 x 20000 photo would need 1.2 GB decoded. 150 MP still
# admits the 108 MP sensors of current phones.
MAX_PIXELS = 150_000_000
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_segments(data: bytes):
    """(marker, offset) of each JPEG header segment, up to and including the first start-of-scan."""
    i = 2
    while i + 3 < len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker == 0xFF or marker == 0x01 or 0xD0 <= marker <= 0xD8:   # fill bytes, markers without length
            i += 1 if marker == 0xFF else 2
            continue
        yield marker, i
        if marker == 0xDA:
            return
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header without decoding; None for other formats."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    frame = _jpeg_frame(data)
    return frame[:2] if frame else None


def _jpeg_frame(data: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, bits per sample, components) from a JPEG's start-of-frame; None if not a JPEG."""
    if data[:2] == b"\xff\xd8":
        for marker, i in _jpeg_segments(data):
            if marker in _JPEG_SOF and i + 10 <= len(data):
                return (int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big"),
                        data[i + 4], data[i + 9])
    return None


_REDUCED_FLAGS = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


def jpeg_reduction(data: bytes, min_side: int | None) -> int:
    """The DCT-domain scale divisor (1, 2, 4 or 8) for decoding `data`: the largest that keeps the short
    side >= min_side. 1 for anything but an 8-bit, 3-component JPEG (grayscale and 12-bit JPEGs take the
    full path, which refuses or converts them as always)."""
    frame = _jpeg_frame(data) if min_side else None
    if frame is None or frame[2] != 8 or frame[3] != 3:
        return 1
    short = min(frame[0], frame[1])
    # libjpeg rounds a scaled side up
    return next((f for f in (8, 4, 2) if -(-short // f) >= min_side), 1)


def _looks_truncated(data: bytes) -> bool:
    if data[:2] == b"\xff\xd8":
        # Entropy-coded data never holds a bare FF D9, so a complete image has its
        # end-of-image marker after its first start-of-scan. Bytes after that marker
        # (the video of a phone's "motion photo", say) are allowed.
        sos = next((i for marker, i in _jpeg_segments(data) if marker == 0xDA), None)
        return sos is None or data.find(b"\xff\xd9", sos) == -1
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return b"IEND" not in data[-64:]
    return False


def decode_image(data: bytes, source: str, min_side: int | None = None) -> np.ndarray:
    """Decode encoded image bytes into an RGB uint8 array (H x W x 3).

    `source` names the file in error messages. With `min_side`, a JPEG is decoded at the smallest
    DCT-domain scale whose short side is still >= min_side (`jpeg_reduction`); EXIF orientation is
    applied either way.
    """
    if not data:
        raise ImageError(f"{source}: empty file")
    size = header_size(data)
    if size is not None and size[0] * size[1] > MAX_PIXELS:
        raise ImageError(f"{source}: image of {size[0]} x {size[1]} pixels is too large "
                         f"(limit {MAX_PIXELS // 1_000_000} megapixels); resize it first")
    if _looks_truncated(data):
        raise ImageError(f"{source}: truncated image (the file ends before the image data does)")
    reduction = jpeg_reduction(data, min_side)
    try:
        img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8),
                           _REDUCED_FLAGS[reduction] if reduction > 1 else _DECODE_FLAGS)
    except cv2.error as e:     # e.g. a BMP header claiming more pixels than OpenCV allows
        raise ImageError(f"{source}: cannot be decoded ({str(e).strip().splitlines()[-1][:120]})") from None
    if img is None:
        raise ImageError(f"{source}: not a readable image (corrupt, or a format OpenCV cannot decode)")
    if img.ndim == 2 or img.shape[2] == 1:
        raise ImageError(f"{source}: grayscale image; EdgeDerm needs colour photographs")
    if img.dtype == np.uint16:
        img = np.round(img.astype(np.float32) / 257.0).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ImageError(f"{source}: unsupported pixel type {img.dtype} (use 8- or 16-bit images)")
    if img.shape[2] == 4:  # some decoders keep alpha even without IMREAD_UNCHANGED
        img = img[:, :, :3]
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_image(path: str | Path, min_side: int | None = None) -> np.ndarray:
    """Read an image file into an RGB uint8 array (H x W x 3); `min_side`: see `decode_image`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not an image") from None
    except OSError as e:
        raise ImageError(f"{path}: cannot read ({e.strerror})") from None
    return decode_image(data, str(path), min_side)


def read_input_image(path: str | Path, cfg: PreprocessConfig) -> np.ndarray:
    """Read a photo as the model's preprocessing decodes it (`cfg.decode`)."""
    return read_image(path, cfg.min_decoded_side)


def resize_image(img: np.ndarray, size: int, rule: str = "area", crop: str = "none") -> np.ndarray:
    """The image (crop "none"), its central square ("center") or its central 1 / ZOOM ("zoom") resized to
    size x size."""
    if crop == "zoom":
        height, width = img.shape[:2]
        keep_h, keep_w = int(round(height / ZOOM)), int(round(width / ZOOM))
        top, left = (height - keep_h) // 2, (width - keep_w) // 2
        img = img[top:top + keep_h, left:left + keep_w]
    elif crop == "center":
        height, width = img.shape[:2]
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        img = img[top:top + side, left:left + side]
    if img.shape[0] == size and img.shape[1] == size:
        return img
    return cv2.resize(img, (size, size), interpolation=INTERPOLATIONS[rule])


def normalize(img: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """RGB uint8 H x W x 3 -> float32 3 x H x W, scaled to [0, 1] then standardised."""
    scale = np.asarray(std, dtype=np.float32) * 255.0
    x = (img.astype(np.float32) - np.asarray(mean, dtype=np.float32) * 255.0) / scale
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess_image(img: np.ndarray, cfg: PreprocessConfig, source: str = "image") -> np.ndarray:
    """An RGB uint8 photo -> the float32 3 x size x size model input. `source` names it in errors."""
    height, width = img.shape[:2]
    if min(height, width) < cfg.size:
        raise ImageError(f"{source}: photo of {width} x {height} pixels is smaller than the model's "
                         f"{cfg.size}-pixel input on its short side; use the original photo, not a thumbnail")
    return normalize(resize_image(img, cfg.size, cfg.resize, cfg.crop), cfg.mean, cfg.std)


def load_input(path: str | Path, cfg: PreprocessConfig) -> np.ndarray:
    """Read a file and preprocess it: what every runtime feeds the model."""
    return preprocess_image(read_input_image(path, cfg), cfg, str(path))
