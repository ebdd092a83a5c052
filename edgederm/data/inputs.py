"""Model inputs for cases of a release, made by the runtimes' own preprocessing.

Calibration, export-time scoring and `edgederm bench` all feed a model the
arrays this function makes, with `edgederm.preprocess.load_input`: the same
code `diagnose` runs on a clinic's photos. numpy and OpenCV only.
"""
from __future__ import annotations

import numpy as np

from edgederm.data.release import Case
from edgederm.preprocess import PreprocessConfig, load_input


def load_arrays(cases: list[Case], preprocess: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """(clinical, dermoscopy): two N x 3 x S x S float32 arrays, in the order of `cases`."""
    clinical = np.stack([load_input(c.clinical, preprocess) for c in cases])
    dermoscopy = np.stack([load_input(c.derm, preprocess) for c in cases])
    return clinical, dermoscopy
