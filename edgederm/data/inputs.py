"""Model inputs for cases of a release, made by the runtimes' own preprocessing.

Calibration, export-time scoring and `edgederm bench` all feed a model the
arrays this module makes, with `edgederm.preprocess.load_input`: the same
code `diagnose` runs on a clinic's photos. numpy and OpenCV only.

A model's inputs are named (`ModelConfig.inputs`, a bundle manifest's
"inputs"): "clinical" and "dermoscopy" are photos, N x 3 x S x S float32.
Functions take and return them as tuples in the model's input order.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgederm.data.release import Case
from edgederm.errors import ConfigError
from edgederm.preprocess import PreprocessConfig, load_input

IMAGE_INPUTS = ("clinical", "dermoscopy")     # the two-photo models' inputs, in order


def case_photo(case: Case, name: str) -> Path:
    """The photo of `case` that feeds the input `name`."""
    if name == "clinical":
        return case.clinical
    if name == "dermoscopy":
        return case.derm
    raise ConfigError(f"model input {name!r} is not a photo (photo inputs: {', '.join(IMAGE_INPUTS)})")


def load_arrays(cases: list[Case], preprocess: PreprocessConfig,
                names: tuple[str, ...] = IMAGE_INPUTS) -> tuple[np.ndarray, ...]:
    """One N x 3 x S x S float32 array per input in `names`, rows in the order of `cases`."""
    return tuple(np.stack([load_input(case_photo(c, name), preprocess) for c in cases]) for name in names)
