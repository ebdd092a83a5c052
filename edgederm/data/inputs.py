"""Model inputs for cases of a release, made by the runtimes' own preprocessing.

Calibration, export-time scoring and `edgederm bench` all feed a model the
arrays this module makes, with `edgederm.preprocess.load_input`: the same
code `diagnose` runs on a clinic's photos. numpy and OpenCV only.

A model's inputs are named (`ModelConfig.inputs`, a bundle manifest's
"inputs"): "clinical" and "dermoscopy" are photos, N x 3 x S x S float32;
"metadata" is the patient's sex, the lesion's body location and elevation,
one-hot (labels.encode_metadata), N x METADATA_SIZE float32. Functions take
and return them as tuples in the model's input order.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from edgederm import labels as L
from edgederm.data.release import Case
from edgederm.errors import ConfigError, LabelError
from edgederm.preprocess import PreprocessConfig, load_input

IMAGE_INPUTS = ("clinical", "dermoscopy")     # the two-photo models' inputs, in order
METADATA_INPUT = L.METADATA_INPUT             # the patient-metadata input (jif-mmfa)
INPUT_NAMES = (*IMAGE_INPUTS, METADATA_INPUT)


def is_photo(name: str) -> bool:
    return name in IMAGE_INPUTS


def input_shape(name: str, size: int) -> tuple[int, ...]:
    """One case's shape of the input `name` (no batch axis): 3 x size x size for a photo, METADATA_SIZE for
    the metadata."""
    if is_photo(name):
        return (3, size, size)
    if name == METADATA_INPUT:
        return (L.METADATA_SIZE,)
    raise ConfigError(f"unknown model input {name!r} (known: {', '.join(INPUT_NAMES)})")


def case_photo(case: Case, name: str) -> Path:
    """The photo of `case` that feeds the input `name`."""
    if name == "clinical":
        return case.clinical
    if name == "dermoscopy":
        return case.derm
    raise ConfigError(f"model input {name!r} is not a photo (photo inputs: {', '.join(IMAGE_INPUTS)})")


def metadata_vector(values: Mapping[str, str], where: str) -> np.ndarray:
    """The one-hot metadata input of one case; a missing or unknown value is a one-line LabelError that
    starts with `where` (the case or file) and lists the allowed values."""
    try:
        return np.asarray(L.encode_metadata(values), np.float32)
    except LabelError as e:
        raise LabelError(f"{where}: {e}") from None


def case_metadata(case: Case) -> np.ndarray:
    return metadata_vector(case.metadata, f"case {case.case_id} (meta.csv row {case.row}, as the index files count)")


def random_metadata(rng: np.random.Generator, count: int) -> np.ndarray:
    """`count` one-hot metadata vectors, each field's value drawn uniformly: parity and timing inputs."""
    return np.stack([metadata_vector({field: str(rng.choice(values)) for field, values in L.METADATA_FIELDS.items()},
                                     "random metadata") for _ in range(count)])


def load_arrays(cases: list[Case], preprocess: PreprocessConfig,
                names: tuple[str, ...] = IMAGE_INPUTS) -> tuple[np.ndarray, ...]:
    """One array per input in `names` (N x 3 x S x S for a photo, N x METADATA_SIZE for the metadata), rows
    in the order of `cases`."""
    return tuple(np.stack([case_metadata(c) for c in cases]) if name == METADATA_INPUT
                 else np.stack([load_input(case_photo(c, name), preprocess) for c in cases]) for name in names)
