"""Which cases calibrate the quantizers, preprocessed once by the runtimes' code.

Default: 300 cases of the train split, stratified by diagnosis, seeded; all
of the split when it is smaller. Asking explicitly for more cases than the
split holds is an error. Calibrating on the split that is later scored would
flatter the INT8 model, so the test split is refused.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgederm import labels as L
from edgederm.data.inputs import IMAGE_INPUTS, load_arrays
from edgederm.data.release import Case, Release
from edgederm.errors import ConfigError
from edgederm.preprocess import PreprocessConfig

DEFAULT_CASES = 300


@dataclass
class CalibrationSet:
    inputs: tuple[np.ndarray, ...]   # one N x 3 x S x S float32 array per model input: what the runtimes feed
    names: tuple[str, ...]           # the model's input names, in the order of `inputs`
    case_ids: list[str]
    split: str
    seed: int

    def __len__(self) -> int:
        return len(self.case_ids)

    def describe(self) -> dict:
        """What goes into a bundle manifest."""
        return {"split": self.split, "seed": self.seed, "count": len(self), "case_ids": self.case_ids,
                "stratified_by": "diagnosis"}


def choose_cases(release: Release, split: str = "train", count: int | None = None, seed: int = 0) -> list[Case]:
    """`count` cases of `split`, stratified by diagnosis (proportional allocation, largest remainders)."""
    if split == "test":
        raise ConfigError("calibration on the test split is refused: it is the split INT8 accuracy is scored on")
    cases = release.split(split)
    if count is None:
        count = min(DEFAULT_CASES, len(cases))
    if count < 1:
        raise ConfigError(f"calibration needs at least 1 case, got {count}")
    if count > len(cases):
        raise ConfigError(f"{release.root}: the {split} split has {len(cases)} cases, "
                          f"fewer than the {count} calibration cases asked for")
    rng = np.random.default_rng(seed)
    diag = L.TASK_KEYS.index("DIAG")
    groups: dict[int, list[Case]] = {}
    for case in cases:
        groups.setdefault(case.labels[diag], []).append(case)
    quotas = {k: count * len(v) / len(cases) for k, v in groups.items()}
    take = {k: int(q) for k, q in quotas.items()}
    for k in sorted(quotas, key=lambda k: quotas[k] - take[k], reverse=True)[: count - sum(take.values())]:
        take[k] += 1
    chosen = []
    for k in sorted(groups):
        order = rng.permutation(len(groups[k]))[: take[k]]
        chosen += [groups[k][i] for i in sorted(order)]
    return sorted(chosen, key=lambda c: c.row)


def build_calibration_set(release: Release, preprocess: PreprocessConfig, split: str = "train",
                          count: int | None = None, seed: int = 0,
                          names: tuple[str, ...] = IMAGE_INPUTS) -> CalibrationSet:
    cases = choose_cases(release, split, count, seed)
    return CalibrationSet(load_arrays(cases, preprocess, names), names, [c.case_id for c in cases], split, seed)
