"""One predictor API over every backend.

    predictor = load_bundle("exports/tiny-openvino-int8")
    prediction = predictor.predict("clinic.jpg", "derm.jpg")       # paths or RGB uint8 arrays
    predictions = predictor.predict_batch([(c1, d1), (c2, d2)])
    probabilities = predictor.run(clinical, dermoscopy)            # preprocessed N x 3 x S x S arrays

Preprocessing comes from the bundle manifest and the shared module
`edgederm.preprocess`, the same code training and calibration used. The photos
of a pair (and of a batch) are decoded and preprocessed on two threads: OpenCV
releases the GIL while it decodes and resizes, so on a 2-core device the two
photos cost about as much as the larger one.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from edgederm.errors import EdgeDermError
from edgederm.preprocess import PreprocessConfig, preprocess_image, read_input_image
from edgederm.runtime.prediction import Prediction

Image = str | Path | np.ndarray


class BundleRunError(EdgeDermError):
    """A bundle that cannot run here, or inputs it cannot take."""


class Predictor:
    backend = "?"

    def __init__(self, bundle: Path, manifest: dict):
        self.bundle = bundle
        self.manifest = manifest
        self.preprocess = PreprocessConfig.from_dict(manifest["preprocess"])
        self.max_batch: int | None = None        # None: any batch size
        self.precision = manifest["precision"]
        self.clinical: dict | None = manifest.get("clinical")    # temperatures and thresholds, when fitted
        self._pool: ThreadPoolExecutor | None = None     # made on first use, for decoding photos

    @property
    def name(self) -> str:
        return f"{self.bundle.name} ({self.backend})"

    # --- backends implement this -------------------------------------------
    def _forward(self, clinical: np.ndarray, dermoscopy: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # --- the shared API ------------------------------------------------------
    def check_batch(self, n: int) -> None:
        if n < 1:
            raise BundleRunError(f"{self.bundle}: batch size must be at least 1, got {n}")
        if self.max_batch is not None and n > self.max_batch:
            raise BundleRunError(f"{self.bundle}: batch size {n} is larger than this engine takes "
                                f"({self.max_batch}); rebuild it with `edgederm engine build --max-batch {n}`")

    def run(self, clinical: np.ndarray, dermoscopy: np.ndarray) -> np.ndarray:
        """Preprocessed inputs (N x 3 x S x S float32) -> N x 24 probabilities, in one call."""
        self.check_batch(len(clinical))
        if len(dermoscopy) != len(clinical):
            raise BundleRunError(f"{self.bundle}: {len(clinical)} clinical but {len(dermoscopy)} dermoscopy inputs")
        size = self.preprocess.size
        for array, name in ((clinical, "clinical"), (dermoscopy, "dermoscopy")):
            if array.shape[1:] != (3, size, size):
                raise BundleRunError(f"{self.bundle}: {name} input has shape {tuple(array.shape)}, "
                                    f"expected N x 3 x {size} x {size}")
        return self._forward(np.ascontiguousarray(clinical, np.float32), np.ascontiguousarray(dermoscopy, np.float32))

    def run_batched(self, clinical: np.ndarray, dermoscopy: np.ndarray, batch_size: int = 16) -> np.ndarray:
        batch_size = min(batch_size, self.max_batch or batch_size)
        return np.concatenate([self.run(clinical[i:i + batch_size], dermoscopy[i:i + batch_size])
                               for i in range(0, len(clinical), batch_size)])

    def prepare(self, image: Image) -> np.ndarray:
        if isinstance(image, (str, Path)):
            return preprocess_image(read_input_image(image, self.preprocess), self.preprocess, str(image))
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise BundleRunError(f"image arrays must be RGB uint8 H x W x 3 (got {image.dtype} {image.shape}); "
                                 "use edgederm.preprocess.read_image to read files")
        return preprocess_image(image, self.preprocess)

    def prepare_pairs(self, pairs: list[tuple[Image, Image]]) -> tuple[np.ndarray, np.ndarray]:
        """Model inputs of the pairs (N x 3 x S x S each), the photos prepared two at a time."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="edgederm-decode")
        images = [image for pair in pairs for image in pair]
        prepared = list(self._pool.map(self.prepare, images))     # the first error is raised here, in order
        return np.stack(prepared[0::2]), np.stack(prepared[1::2])

    def predict(self, clinical_image: Image, dermoscopy_image: Image) -> Prediction:
        return self.predict_batch([(clinical_image, dermoscopy_image)])[0]

    def predict_batch(self, pairs: list[tuple[Image, Image]]) -> list[Prediction]:
        if not pairs:
            return []
        clinical, dermoscopy = self.prepare_pairs(pairs)
        return [Prediction.from_row(row, self.clinical) for row in self.run_batched(clinical, dermoscopy)]
