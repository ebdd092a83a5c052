"""The one calibration set, in the form each quantizer wants."""
from __future__ import annotations

from typing import Iterator

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from edgederm.calibration.selection import CalibrationSet


def batches(calib: CalibrationSet, batch_size: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """Input dicts named as the exported graph's inputs (the calibration set's `names`)."""
    for start in range(0, len(calib), batch_size):
        yield {name: x[start:start + batch_size] for name, x in zip(calib.names, calib.inputs)}


def nncf_dataset(calib: CalibrationSet):
    """nncf.Dataset of single-case input dicts (NNCF's subset_size counts items)."""
    import nncf
    return nncf.Dataset(list(batches(calib)), lambda item: item)


class OrtCalibrationReader(CalibrationDataReader):
    """onnxruntime.quantization's reader over the same cases."""

    def __init__(self, calib: CalibrationSet, batch_size: int = 1):
        self.calib, self.batch_size = calib, batch_size
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)

    def rewind(self) -> None:
        self._items = batches(self.calib, self.batch_size)
