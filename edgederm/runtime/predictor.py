"""One predictor API over every backend.

    predictor = load_bundle("exports/tiny-openvino-int8")
    prediction = predictor.predict("clinic.jpg", "derm.jpg")       # paths or RGB uint8 arrays
    predictions = predictor.predict_batch([(c1, d1), (c2, d2)])
    probabilities = predictor.run(clinical, dermoscopy)            # preprocessed N x 3 x S x S arrays

A bundle says which inputs it takes (manifest "inputs", in order, with their
shapes): a two-photo model takes the clinical and the dermoscopy photo, a
clinical-only model the clinical photo alone (`predictor.predict("clinic.jpg")`),
a jif-mmfa model both photos and the patient's metadata, given as a mapping
(`predictor.predict("c.jpg", "d.jpg", {"sex": "female", "location": "back",
"elevation": "flat"})`; labels.METADATA_FIELDS lists the values). Every call
takes one item per input, in that order.

Preprocessing comes from the bundle manifest and the shared module
`edgederm.preprocess`, the same code training and calibration used. The photos
of a case (and of a batch) are decoded and preprocessed on two threads: OpenCV
releases the GIL while it decodes and resizes, so on a 2-core device the two
photos cost about as much as the larger one.
"""
from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Mapping

import numpy as np

from edgederm import labels as L
from edgederm.errors import EdgeDermError, LabelError
from edgederm.preprocess import PreprocessConfig, preprocess_image, read_input_image
from edgederm.runtime.prediction import Prediction
from edgederm.scoring.calibration import stored_calibration

Image = str | Path | np.ndarray
Item = Image | Mapping[str, str]      # a photo, or the metadata input's {field: value}


class BundleRunError(EdgeDermError):
    """A bundle that cannot run here, or inputs it cannot take."""


class Predictor:
    backend = "?"

    def __init__(self, bundle: Path, manifest: dict):
        self.bundle = bundle
        self.manifest = manifest
        self.preprocess = PreprocessConfig.from_dict(manifest["preprocess"])
        self.input_names: tuple[str, ...] = tuple(i["name"] for i in manifest["inputs"])
        # one case's shape per input, the batch axis left out: 3 x S x S for a photo, 14 for the metadata
        self.input_shapes: dict[str, tuple[int, ...]] = {i["name"]: tuple(i["shape"][1:]) for i in manifest["inputs"]}
        self.max_batch: int | None = None        # None: any batch size
        self.precision = manifest["precision"]
        # the precision the backend reports its float operations run in (OpenVINO reads it back); None: not reported
        self.float_precision: str | None = None
        # what the backend was built to run, where the precision does not say it all (a TensorRT engine's flags
        # and FP32 pins, runtime/engine.py); None: the precision says it
        self.runs_as: str | None = None
        self.calibration: dict | None = stored_calibration(manifest)    # temperatures and thresholds, when fitted
        self._pool: ThreadPoolExecutor | None = None     # made on first use, for decoding photos

    @property
    def name(self) -> str:
        views = (self.manifest.get("tta") or {}).get("views")    # test-time views built into the graph
        runs = f", {self.runs_as}" if self.runs_as else ""
        return f"{self.bundle.name} ({self.backend}{runs}{f', TTA {len(views)} views' if views else ''})"

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
        """Prepared inputs (N x `input_shapes[name]` float32 each, in `input_names` order) -> N x 24
        probabilities, in one call."""
        self._check_count(len(inputs), "inputs")
        self.check_batch(len(inputs[0]))
        for array, name in zip(inputs, self.input_names):
            if len(array) != len(inputs[0]):
                raise BundleRunError(f"{self.bundle}: {len(inputs[0])} {self.input_names[0]} but {len(array)} "
                                     f"{name} inputs")
            if array.shape[1:] != self.input_shapes[name]:
                raise BundleRunError(f"{self.bundle}: {name} input has shape {tuple(array.shape)}, "
                                     f"expected N x {' x '.join(map(str, self.input_shapes[name]))}")
        return self._forward(*(np.ascontiguousarray(x, np.float32) for x in inputs))

    def run_batched(self, *inputs: np.ndarray, batch_size: int = 16) -> np.ndarray:
        batch_size = min(batch_size, self.max_batch or batch_size)
        return np.concatenate([self.run(*(x[i:i + batch_size] for x in inputs))
                               for i in range(0, len(inputs[0]), batch_size)])

    def prepare_metadata(self, values: Mapping[str, str]) -> np.ndarray:
        """The metadata input of one case: {sex, location, elevation} -> one-hot float32. A missing or unknown
        value is a one-line error listing the allowed values."""
        if not isinstance(values, Mapping):
            raise BundleRunError(f"{self.bundle}: the metadata input takes a mapping of "
                                 f"{', '.join(L.METADATA_FIELDS)}, got {type(values).__name__}")
        try:
            return np.asarray(L.encode_metadata(values), np.float32)
        except LabelError as e:
            raise BundleRunError(f"{self.bundle}: metadata {e}") from None

    def prepare(self, image: Image) -> np.ndarray:
        if isinstance(image, (str, Path)):
            return preprocess_image(read_input_image(image, self.preprocess), self.preprocess, str(image))
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise BundleRunError(f"image arrays must be RGB uint8 H x W x 3 (got {image.dtype} {image.shape}); "
                                 "use edgederm.preprocess.read_image to read files")
        return preprocess_image(image, self.preprocess)

    def prepare_cases(self, cases: list[tuple[Item, ...]]) -> tuple[np.ndarray, ...]:
        """Model inputs of the cases (one N x ... array per input), each case one item per input in
        `input_names` order (a photo, or the metadata mapping); the photos are prepared two at a time."""
        what = "items per case" if L.METADATA_INPUT in self.input_names else "photos per case"
        for case in cases:
            self._check_count(len(case), what)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="edgederm-decode")
        k = len(self.input_names)
        items = [item for case in cases for item in case]
        # in case order, so the first bad item's error is the one raised
        prepared = list(self._pool.map(self._prepare_item, itertools.cycle(self.input_names), items))
        return tuple(np.stack(prepared[i::k]) for i in range(k))

    def _prepare_item(self, name: str, item: Item) -> np.ndarray:
        return self.prepare_metadata(item) if name == L.METADATA_INPUT else self.prepare(item)

    prepare_pairs = prepare_cases       # the two-photo name

    def predict(self, *items: Item) -> Prediction:
        """One case: a photo (path or RGB uint8 array) per photo input, the metadata mapping for a metadata
        input, in `input_names` order."""
        return self.predict_batch([items])[0]

    def predict_batch(self, cases: list[tuple[Item, ...]]) -> list[Prediction]:
        if not cases:
            return []
        return [Prediction.from_row(row, self.calibration) for row in self.run_batched(*self.prepare_cases(cases))]
