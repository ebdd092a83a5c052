"""The label schema of the seven-point checklist dataset (derm7pt release_v0).

One source of truth for data, models, metrics and runtime: the eight tasks in
a fixed order, their classes in a fixed order, how the raw meta.csv strings
group into classes (as the dataset's own reference code,
`Derm7PtDatasetGroupInfrequent`, groups them), the 17 categories whose AUC is
averaged, the melanoma-related categories, and the seven-point score.

Pure Python: imported on the device, where there is no torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from edgederm.errors import LabelError


@dataclass(frozen=True)
class Task:
    key: str                      # short name used everywhere: "DIAG", "PN", ...
    column: str                   # meta.csv column holding the raw string
    title: str                    # human-readable name
    classes: tuple[str, ...]      # class abbreviations, in output order
    raw_strings: Mapping[str, str]  # raw meta.csv string -> class abbreviation

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def encode(self, raw: str) -> int:
        """Class index of a raw meta.csv string; LabelError if unknown."""
        cls = self.raw_strings.get(raw.strip())
        if cls is None:
            raise LabelError(f"unknown value {raw!r} in column {self.column!r}")
        return self.classes.index(cls)


def _group(groups: Mapping[str, Sequence[str]]) -> dict[str, str]:
    return {raw: cls for cls, raws in groups.items() for raw in raws}


# The first string of each group is the one the synthetic release writes most;
# the rest are the other spellings of the real release. Group names used by the
# reference code for already-grouped files ("nevus", "regular", ...) are
# accepted too, so anything the reference reader takes, we take.
TASKS: tuple[Task, ...] = (
    Task("DIAG", "diagnosis", "Diagnosis", ("BCC", "NEV", "MEL", "MISC", "SK"), _group({
        "BCC": ["basal cell carcinoma"],
        "NEV": ["clark nevus", "blue nevus", "combined nevus", "congenital nevus", "dermal nevus",
                "recurrent nevus", "reed or spitz nevus", "nevus"],
        "MEL": ["melanoma (less than 0.76 mm)", "melanoma", "melanoma (in situ)",
                "melanoma (0.76 to 1.5 mm)", "melanoma (more than 1.5 mm)", "melanoma metastasis"],
        "MISC": ["dermatofibroma", "lentigo", "melanosis", "miscellaneous", "vascular lesion",
                 "DF/LT/MLS/MISC"],
        "SK": ["seborrheic keratosis"],
    })),
    Task("PN", "pigment_network", "Pigment network", ("ABS", "TYP", "ATP"), _group({
        "ABS": ["absent"], "TYP": ["typical"], "ATP": ["atypical"],
    })),
    Task("STR", "streaks", "Streaks", ("ABS", "REG", "IR"), _group({
        "ABS": ["absent"], "REG": ["regular"], "IR": ["irregular"],
    })),
    Task("PIG", "pigmentation", "Pigmentation", ("ABS", "REG", "IR"), _group({
        "ABS": ["absent"],
        "REG": ["diffuse regular", "localized regular", "regular"],
        "IR": ["diffuse irregular", "localized irregular", "irregular"],
    })),
    Task("RS", "regression_structures", "Regression structures", ("ABS", "PRS"), _group({
        "ABS": ["absent"],
        "PRS": ["blue areas", "white areas", "combinations", "present"],
    })),
    Task("DaG", "dots_and_globules", "Dots and globules", ("ABS", "REG", "IR"), _group({
        "ABS": ["absent"], "REG": ["regular"], "IR": ["irregular"],
    })),
    Task("BWV", "blue_whitish_veil", "Blue-whitish veil", ("ABS", "PRS"), _group({
        "ABS": ["absent"], "PRS": ["present"],
    })),
    Task("VS", "vascular_structures", "Vascular structures", ("ABS", "REG", "IR"), _group({
        "ABS": ["absent"],
        "REG": ["arborizing", "comma", "hairpin", "within regression", "wreath", "regular"],
        "IR": ["dotted", "linear irregular", "dotted/irregular"],
    })),
)

TASK_KEYS: tuple[str, ...] = tuple(t.key for t in TASKS)
TASK_BY_KEY: dict[str, Task] = {t.key: t for t in TASKS}
NUM_CLASSES: tuple[int, ...] = tuple(t.num_classes for t in TASKS)
NUM_TASKS = len(TASKS)
TOTAL_CLASSES: int = sum(NUM_CLASSES)  # width of a head's concatenated logits (24)

# Where each task's logits sit in a head's concatenated output.
TASK_SLICES: dict[str, slice] = {}
_start = 0
for _t in TASKS:
    TASK_SLICES[_t.key] = slice(_start, _start + _t.num_classes)
    _start += _t.num_classes
del _start, _t

# The 17 one-vs-rest categories whose AUC is averaged (every class but ABS).
AUC_CATEGORIES: tuple[tuple[str, str], ...] = tuple(
    (t.key, c) for t in TASKS for c in t.classes if c != "ABS"
)

# Categories whose precision / sensitivity / specificity the paper reports.
MELANOMA_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("DIAG", "MEL"), ("PN", "ATP"), ("STR", "IR"), ("PIG", "IR"),
    ("RS", "PRS"), ("DaG", "IR"), ("BWV", "PRS"), ("VS", "IR"),
)

# Seven-point checklist: major criteria 2 points, minor criteria 1 point.
SEVEN_POINT_CRITERIA: tuple[tuple[str, str, int], ...] = (
    ("PN", "ATP", 2), ("BWV", "PRS", 2), ("VS", "IR", 2),
    ("STR", "IR", 1), ("PIG", "IR", 1), ("DaG", "IR", 1), ("RS", "PRS", 1),
)
SEVEN_POINT_THRESHOLD = 3  # a score of 3 or more is suspicious for melanoma

# Words for the class abbreviations, for people reading a result (the clinic app's page).
DIAGNOSIS_NAMES: dict[str, str] = {
    "BCC": "basal cell carcinoma", "NEV": "nevus", "MEL": "melanoma",
    "MISC": "other (dermatofibroma, lentigo, melanosis, vascular, miscellaneous)", "SK": "seborrheic keratosis",
}
CRITERION_CLASS_NAMES: dict[str, str] = {
    "ABS": "absent", "TYP": "typical", "ATP": "atypical", "REG": "regular", "IR": "irregular", "PRS": "present",
}


# Patient metadata a clinic knows at no cost: meta.csv's `sex`, `location` and `elevation` columns, with
# the values the real release uses. Never `management` or `level_of_diagnostic_difficulty`: both are
# clinicians' judgements made knowing the case, and give the answer away. One-hot in this order: 14 values.
METADATA_FIELDS: dict[str, tuple[str, ...]] = {
    "sex": ("female", "male"),
    "location": ("abdomen", "acral", "back", "buttocks", "chest", "genital areas", "head neck", "lower limbs",
                 "upper limbs"),
    "elevation": ("flat", "palpable", "nodular"),
}
METADATA_SIZE = sum(len(values) for values in METADATA_FIELDS.values())
METADATA_INPUT = "metadata"    # the model input (and manifest "inputs" name) that carries the one-hot vector


def encode_metadata(values: Mapping[str, str]) -> list[float]:
    """One-hot vector (METADATA_SIZE) of a case's metadata; a missing or unknown value is a LabelError
    that lists the allowed values. Matching ignores case and surrounding spaces."""
    vector: list[float] = []
    for field, allowed in METADATA_FIELDS.items():
        index = metadata_index(values, field)
        vector += [1.0 if i == index else 0.0 for i in range(len(allowed))]
    return vector


def metadata_index(values: Mapping[str, str], field: str) -> int:
    """The class index of one metadata field (the clinical-only model's body-location task); a missing or
    unknown value is a LabelError listing the allowed values. Matching ignores case and surrounding spaces."""
    allowed = METADATA_FIELDS[field]
    raw = values.get(field)
    value = raw.strip().lower() if isinstance(raw, str) else ""
    if value not in allowed:
        said = "missing" if not value else f"unknown value {raw!r}"
        raise LabelError(f"{field}: {said} (allowed: {', '.join(allowed)})")
    return allowed.index(value)


def class_name(task: str, cls: str) -> str:
    return DIAGNOSIS_NAMES[cls] if task == "DIAG" else CRITERION_CLASS_NAMES[cls]


def category_name(task: str, cls: str) -> str:
    return f"{task} {cls}"


def class_index(task: str, cls: str) -> int:
    return TASK_BY_KEY[task].classes.index(cls)


def seven_point_contributions(labels: Mapping[str, int | str]) -> list[tuple[str, str, int]]:
    """The criteria present in `labels` (task key -> class index or abbreviation)
    that add to the seven-point score, with their points."""
    found = []
    for task, cls, points in SEVEN_POINT_CRITERIA:
        value = labels[task]
        name = TASK_BY_KEY[task].classes[value] if isinstance(value, int) else value
        if name == cls:
            found.append((task, cls, points))
    return found


def seven_point_score(labels: Mapping[str, int | str]) -> int:
    return sum(points for _, _, points in seven_point_contributions(labels))
