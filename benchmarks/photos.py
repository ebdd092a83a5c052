"""Phone-sized photos for end-to-end timing: a clinic's phone takes 12-MP
pictures (4000 x 3000), and decoding those, not the model, is most of the wait.

`write_phone_pair` makes such a pair from a pair of smaller photos (the
synthetic release's 768 x 512): resized up, with a little sensor-like noise so
the JPEG is as hard to decode as a real one (a smooth upscale compresses to a
fraction of a phone photo's size and decodes faster). numpy and OpenCV only.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edgederm.preprocess import read_image

PHONE_SIZE = (4000, 3000)     # width x height of a 12-MP phone photo


def write_phone_pair(folder: Path, clinical: Path, dermoscopy: Path, size: tuple[int, int] = PHONE_SIZE,
                     seed: int = 0) -> tuple[Path, Path]:
    """Write FOLDER/1-clinical.jpg and FOLDER/2-derm.jpg (JPEG quality 92) and return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = []
    for name, source in (("1-clinical.jpg", clinical), ("2-derm.jpg", dermoscopy)):
        big = cv2.resize(read_image(source), size, interpolation=cv2.INTER_CUBIC).astype(np.int16)
        big += rng.integers(-6, 7, size=big.shape, dtype=np.int16)
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(np.clip(big, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, 92])
        path = folder / name
        tmp = path.with_name(path.name + ".partial")
        tmp.write_bytes(buf.tobytes())
        tmp.replace(path)
        written.append(path)
    return written[0], written[1]
