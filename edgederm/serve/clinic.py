"""The clinic app's state (edgederm/serve/app.py): one predictor, model calls serialised, the case store and
the access code. Photos are decoded only by `edgederm.preprocess` (size checked from the header before
decoding); the routes (edgederm/serve/routes.py) reach the one `Clinic` through `Depends(clinic_of)`."""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from edgederm import labels as L
from edgederm.checksums import sha256_file
from edgederm.errors import EdgeDermError
from edgederm.preprocess import decode_image, preprocess_image
from edgederm.runtime import DISCLAIMER, Prediction, Predictor
from edgederm.serve.access import AccessCode
from edgederm.serve.store import BundleIdentity, CaseStore, Photo, today

_SUFFIXES = ((b"\xff\xd8", ".jpg", "image/jpeg"), (b"\x89PNG", ".png", "image/png"))


def bundle_identity(predictor: Predictor) -> BundleIdentity:
    """Name, precision and the sha256 of manifest.json, which itself holds every file's sha256."""
    return BundleIdentity(predictor.bundle.name, predictor.precision, sha256_file(predictor.bundle / "manifest.json"))


def _kind(data: bytes) -> tuple[str, str]:
    return next(((s, t) for magic, s, t in _SUFFIXES if data.startswith(magic)), (".img", "application/octet-stream"))


# What the app takes: the formats whose pixel count edgederm.preprocess reads from the header before decoding
# (a few bytes of BMP, TIFF or WebP can claim gigapixels). Phones and dermatoscopes save JPEG; browsers
# hand over camera photos as JPEG.
TAKEN = {".jpg", ".png"}


@dataclass
class Upload:
    label: str          # "clinical" / "dermoscopy": names the photo in messages
    name: str
    data: bytes

    @property
    def source(self) -> str:
        return f"{self.label} photo {self.name!r}"


class Clinic:
    """The app's state: one predictor (model calls serialised), the case store, the access code."""

    def __init__(self, predictor: Predictor, store: CaseStore, access: AccessCode | None, max_upload_mb: float,
                 host: str = "127.0.0.1"):
        self.predictor, self.store, self.access, self.host = predictor, store, access, host
        self.max_upload_bytes = int(max_upload_mb * 1024 * 1024)
        self.bundle = bundle_identity(predictor)
        self._model_lock = threading.Lock()
        # decoded photos are the app's big allocations (up to 150 MP x 3 bytes each): a few at a time
        self._decoding = threading.BoundedSemaphore(max(2, os.cpu_count() or 2))

    def diagnose(self, visit_id: str, clinical: Upload, derm: Upload) -> dict:
        """Decode, predict and store one case; EdgeDermError for a photo the model cannot take."""
        for upload in (clinical, derm):
            if _kind(upload.data)[0] not in TAKEN:
                raise EdgeDermError(f"{upload.source}: not a JPEG or PNG photo (the formats the app takes)")
        cfg = self.predictor.preprocess
        inputs = []
        for u in (clinical, derm):
            with self._decoding:
                inputs.append(preprocess_image(decode_image(u.data, u.source, cfg.min_decoded_side), cfg, u.source))
        with self._model_lock:
            row = self.predictor.run(inputs[0][None], inputs[1][None])[0]
        prediction = Prediction.from_row(row, self.predictor.calibration).to_dict()
        photos = [Photo(u.name, u.data, _kind(u.data)[0]) for u in (clinical, derm)]
        return self.store.add(visit_id, *photos, self.bundle, prediction).to_dict()

    def info(self) -> dict:
        return {
            "bundle": {"name": self.bundle.name, "precision": self.bundle.precision, "sha256": self.bundle.sha256,
                       "backend": self.predictor.backend},
            "disclaimer": DISCLAIMER,
            "today": today(),
            "max_upload_mb": self.max_upload_bytes / 1024 / 1024,
            "tasks": [{"key": t.key, "title": t.title,
                       "classes": [{"key": c, "name": L.class_name(t.key, c)} for c in t.classes]} for t in L.TASKS],
            "seven_point": {"criteria": [{"task": t, "class": c, "points": p} for t, c, p in L.SEVEN_POINT_CRITERIA],
                            "threshold": L.SEVEN_POINT_THRESHOLD},
        }
