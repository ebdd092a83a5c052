"""Calibration-case choice: stratified, seeded, bounded by the split."""
import pytest

from edgederm import labels as L
from edgederm.calibration.adapters import OrtCalibrationReader, nncf_dataset
from edgederm.calibration.selection import build_calibration_set, choose_cases
from edgederm.data.release import read_release
from edgederm.errors import ConfigError
from edgederm.preprocess import PreprocessConfig, load_input


def test_choice_is_stratified_seeded_and_bounded(synthetic_release):
    release = read_release(synthetic_release)
    train = release.split("train")
    everything = choose_cases(release)            # default: min(300, split)
    assert len(everything) == len(train)
    half = choose_cases(release, count=len(train) // 2, seed=1)
    assert half == choose_cases(release, count=len(train) // 2, seed=1)
    assert half != choose_cases(release, count=len(train) // 2, seed=2)
    diag = L.TASK_KEYS.index("DIAG")
    for cls in range(5):   # each diagnosis within one case of its proportional share
        share = sum(c.labels[diag] == cls for c in train) * len(half) / len(train)
        assert abs(sum(c.labels[diag] == cls for c in half) - share) < 1
    with pytest.raises(ConfigError, match=rf"the train split has {len(train)} cases, fewer than the 999"):
        choose_cases(release, count=999)
    with pytest.raises(ConfigError, match="test split is refused"):
        choose_cases(release, split="test")


def test_every_quantizer_is_fed_the_runtime_preprocessing(synthetic_release):
    release = read_release(synthetic_release)
    cfg = PreprocessConfig(size=64)
    calib = build_calibration_set(release, cfg, count=5)
    first = next(c for c in release.split("train") if c.case_id == calib.case_ids[0])
    assert (calib.inputs[0][0] == load_input(first.clinical, cfg)).all()
    reader = OrtCalibrationReader(calib)
    items = list(iter(reader.get_next, None))
    assert len(items) == 5 and set(items[0]) == {"clinical", "dermoscopy"}
    reader.rewind()
    assert reader.get_next()["dermoscopy"].shape == (1, 3, 64, 64)
    assert len(list(nncf_dataset(calib).get_inference_data())) == 5
    assert calib.describe()["case_ids"] == calib.case_ids
