"""One predictor API over every backend.

    predictor = load_bundle("exports/tiny-openvino-int8")
    prediction = predictor.predict("clinic.jpg", "derm.jpg")       # paths or RGB uint8 arrays
    predictions = predictor.predict_batch([(c1, d1), (c2, d2)])
    probabilities = predictor.run(clinical, dermoscopy)            # preprocessed N x 3 x S x S arrays

A bundle says which photos it takes (manifest "inputs", in order): a
two-photo model takes the clinical and the dermoscopy photo, a clinical-only
model the clinical photo alone (`predictor.predict("clinic.jpg")`). Every
call takes one photo (or array) per input, in that order.

Preprocessing comes from the bundle manifest and the shared module
`edgederm.preprocess`, the same code training and calibration used. The photos
of a case (and of a batch) are decoded and preprocessed on two threads: OpenCV
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
        self.input_names: tuple[str, ...] = tuple(i["name"] for i in manifest["inputs"])
        self.max_batch: int | None = None        # None: any batch size
        self.precision = manifest["precision"]
        self.clinical: dict | None = manifest.get("clinical")    # temperatures and thresholds, when fitted
        self._pool: ThreadPoolExecutor | None = None     # made on first use, for decoding photos

    @property
    def name(self) -> str:
        return f"{self.bundle.name} ({self.backend})"

    # --- backends implement this -------------------------------------------
    def _forward(self, *inputs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # --- the shared API ------------------------------------------------------
    def check_batch(self, n: int) -> None:
        if n < 1:
            raise BundleRunError(f"{self.bundle}: batch size must be at least 1, got {n}")
        if self.max_batch is not None and n > self.max_batch:
            raise BundleRunError(f"{self.bundle}: batch size {n} is larger than this engine takes "
                                f"({self.max_batch}); rebuild it with `edgederm engine build --max-batch {n}`")

    def _check_count(self, given: int, what: str) -> None:
        if given != len(self.input_names):
            raise BundleRunError(f"{self.bundle}: this bundle takes {len(self.input_names)} {what} "
                                 f"({', '.join(self.input_names)}), got {given}")

    def run(self, *inputs: np.ndarray) -> np.ndarray:
        """Preprocessed inputs (N x 3 x S x S float32 each, in `input_names` order) -> N x 24 probabilities,
        in one call."""
        self._check_count(len(inputs), "inputs")
        self.check_batch(len(inputs[0]))
        size = self.preprocess.size
        for array, name in zip(inputs, self.input_names):
            if len(array) != len(inputs[0]):
                raise BundleRunError(f"{self.bundle}: {len(inputs[0])} {self.input_names[0]} but {len(array)} "
                                     f"{name} inputs")
            if array.shape[1:] != (3, size, size):
                raise BundleRunError(f"{self.bundle}: {name} input has shape {tuple(array.shape)}, "
                                    f"expected N x 3 x {size} x {size}")
        return self._forward(*(np.ascontiguousarray(x, np.float32) for x in inputs))

    def run_batched(self, *inputs: np.ndarray, batch_size: int = 16) -> np.ndarray:
        batch_size = min(batch_size, self.max_batch or batch_size)
        return np.concatenate([self.run(*(x[i:i + batch_size] for x in inputs))
                               for i in range(0, len(inputs[0]), batch_size)])

    def prepare(self, image: Image) -> np.ndarray:
        if isinstance(image, (str, Path)):
            return preprocess_image(read_input_image(image, self.preprocess), self.preprocess, str(image))
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise BundleRunError(f"image arrays must be RGB uint8 H x W x 3 (got {image.dtype} {image.shape}); "
                                 "use edgederm.preprocess.read_image to read files")
        return preprocess_image(image, self.preprocess)

    def prepare_cases(self, cases: list[tuple[Image, ...]]) -> tuple[np.ndarray, ...]:
        """Model inputs of the cases (one N x 3 x S x S array per input), each case one photo per input in
        `input_names` order; the photos are prepared two at a time."""
        for case in cases:
            self._check_count(len(case), "photos per case")
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="edgederm-decode")
        k = len(self.input_names)
        prepared = list(self._pool.map(self.prepare, [image for case in cases for image in case]))  # first error first
        return tuple(np.stack(prepared[i::k]) for i in range(k))

    prepare_pairs = prepare_cases       # the two-photo name

    def predict(self, *photos: Image) -> Prediction:
        """One case: a photo (path or RGB uint8 array) per input, in `input_names` order."""
        return self.predict_batch([photos])[0]

    def predict_batch(self, cases: list[tuple[Image, ...]]) -> list[Prediction]:
        if not cases:
            return []
        return [Prediction.from_row(row, self.clinical) for row in self.run_batched(*self.prepare_cases(cases))]
