"""A synthetic seven-point checklist release, written in the exact release_v0 layout.

The real dataset is licensed for research and cannot ship, so every command
runs offline on this stand-in: same 19 meta.csv columns, same index files,
images in sub-folders with mixed `.jpg`/`.JPG` names, 768 x 512 JPEG pairs.

Labels: the diagnosis is drawn from the real release's frequencies, each
criterion from P(class | diagnosis) as counted on the real release (CLASS_GIVEN_DIAGNOSIS), then a raw string
within the class (weights approximate the real release; only the grouped class
matters to the model, the raw string only picks a drawing variant). The
seven-point score column is computed from the drawn criteria, as in the real
file. Splits are stratified by diagnosis in the real release's 413/203/395
proportions. Patient metadata (sex, location, elevation) is drawn from
METADATA_GIVEN_DIAGNOSIS, after everything else, so it changes no label,
split or pixel. Everything is a function of the seed: each case draws its
pictures from its own generator, so the worker count does not change a pixel.
"""
from __future__ import annotations

import csv
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Mapping

import cv2
import numpy as np

from edgederm import labels as L
from edgederm.data.release import IMAGES_DIR, META_COLUMNS, META_FILE, SPLITS, index_file
from edgederm.data.render import render_case
from edgederm.errors import DataError
from edgederm.staging import staged_directory

DIAGNOSIS_COUNTS = {"BCC": 42, "NEV": 575, "MEL": 252, "MISC": 97, "SK": 45}
SPLIT_SIZES = {"train": 413, "valid": 203, "test": 395}

# P(class | diagnosis), counted on the real release (1011 cases); rows follow each task's class order.
CLASS_GIVEN_DIAGNOSIS: dict[str, dict[str, tuple[float, ...]]] = {
    "PN":  {"BCC": (.93, .05, .02), "NEV": (.34, .53, .14), "MEL": (.32, .13, .55), "MISC": (.54, .38, .08), "SK": (.73, .16, .11)},
    "STR": {"BCC": (.93, .00, .07), "NEV": (.70, .16, .15), "MEL": (.37, .02, .60), "MISC": (.81, .10, .08), "SK": (.91, .02, .07)},
    "PIG": {"BCC": (.69, .00, .31), "NEV": (.65, .14, .21), "MEL": (.43, .01, .56), "MISC": (.67, .22, .11), "SK": (.22, .33, .44)},
    "RS":  {"BCC": (.83, .17), "NEV": (.79, .21), "MEL": (.56, .44), "MISC": (.90, .10), "SK": (.93, .07)},
    "DaG": {"BCC": (.45, .02, .52), "NEV": (.20, .51, .30), "MEL": (.08, .04, .88), "MISC": (.56, .21, .24), "SK": (.49, .27, .24)},
    "BWV": {"BCC": (.79, .21), "NEV": (.89, .11), "MEL": (.52, .48), "MISC": (.99, .01), "SK": (.96, .04)},
    "VS":  {"BCC": (.36, .62, .02), "NEV": (.90, .07, .03), "MEL": (.68, .13, .18), "MISC": (.86, .10, .04), "SK": (.78, .18, .04)},
}

# Raw strings within a class, approximately as often as in the real release.
RAW_WEIGHTS: dict[str, dict[str, dict[str, float]]] = {
    "DIAG": {
        "BCC": {"basal cell carcinoma": 1},
        "NEV": {"clark nevus": 399, "reed or spitz nevus": 79, "dermal nevus": 33, "blue nevus": 28,
                "congenital nevus": 17, "combined nevus": 13, "recurrent nevus": 6},
        "MEL": {"melanoma (less than 0.76 mm)": 102, "melanoma (in situ)": 64, "melanoma (0.76 to 1.5 mm)": 53,
                "melanoma (more than 1.5 mm)": 28, "melanoma metastasis": 4, "melanoma": 1},
        "MISC": {"vascular lesion": 29, "lentigo": 24, "dermatofibroma": 20, "melanosis": 16, "miscellaneous": 8},
        "SK": {"seborrheic keratosis": 1},
    },
    "PIG": {"REG": {"diffuse regular": 115, "localized regular": 3},
            "IR": {"diffuse irregular": 265, "localized irregular": 40}},
    "RS": {"PRS": {"blue areas": 116, "white areas": 82, "combinations": 55}},
    "VS": {"REG": {"within regression": 46, "arborizing": 31, "comma": 23, "hairpin": 15, "wreath": 2},
           "IR": {"dotted": 53, "linear irregular": 18}},
}

# P(value | diagnosis) of the patient metadata, in labels.METADATA_FIELDS order. Invented for the synthetic
# release, shaped by common dermatology priors (basal cell carcinoma on the head and neck and often
# nodular; seborrheic keratosis raised, on the trunk; melanoma and nevi mostly flat or palpable, on the
# back and limbs), NOT the real release's frequencies: metadata carries some signal here, never the answer.
METADATA_GIVEN_DIAGNOSIS: dict[str, dict[str, tuple[float, ...]]] = {
    "sex": {"BCC": (0.45, 0.55), "NEV": (0.55, 0.45), "MEL": (0.45, 0.55), "MISC": (0.55, 0.45), "SK": (0.5, 0.5)},
    #           abdomen acral back  buttocks chest genital head-neck lower upper
    "location": {"BCC": (0.05, 0.01, 0.15, 0.01, 0.10, 0.01, 0.45, 0.07, 0.15),
                 "NEV": (0.12, 0.04, 0.30, 0.03, 0.12, 0.02, 0.07, 0.18, 0.12),
                 "MEL": (0.08, 0.05, 0.30, 0.02, 0.10, 0.01, 0.10, 0.22, 0.12),
                 "MISC": (0.08, 0.04, 0.15, 0.03, 0.10, 0.03, 0.12, 0.30, 0.15),
                 "SK": (0.10, 0.01, 0.30, 0.02, 0.22, 0.01, 0.16, 0.08, 0.10)},
    #            flat  palpable nodular
    "elevation": {"BCC": (0.20, 0.40, 0.40), "NEV": (0.40, 0.45, 0.15), "MEL": (0.45, 0.40, 0.15),
                  "MISC": (0.35, 0.45, 0.20), "SK": (0.15, 0.65, 0.20)},
}
_MANAGEMENT = ("excision", "clinical follow up", "no further examination")
_DIFFICULTY = ("low", "medium", "high")


def _pick(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = list(weights)
    p = np.asarray([weights[n] for n in names], dtype=np.float64)
    return names[rng.choice(len(names), p=p / p.sum())]


def sample_labels(rng: np.random.Generator) -> tuple[dict[str, str], dict[str, str]]:
    """One case's (class per task, raw string per task)."""
    classes = {"DIAG": _pick(rng, DIAGNOSIS_COUNTS)}
    for task in L.TASKS[1:]:
        probs = CLASS_GIVEN_DIAGNOSIS[task.key][classes["DIAG"]]
        classes[task.key] = _pick(rng, dict(zip(task.classes, probs)))
    raw = {}
    for task in L.TASKS:
        options = RAW_WEIGHTS.get(task.key, {}).get(classes[task.key])
        if options:
            raw[task.key] = _pick(rng, options)
        else:   # a class with one raw spelling: the first in the schema
            raw[task.key] = next(r for r, c in task.raw_strings.items() if c == classes[task.key])
    return classes, raw


def _stratified_splits(rng: np.random.Generator, diagnoses: list[str],
                       sizes: Mapping[str, int]) -> dict[str, list[int]]:
    total = sum(sizes.values())
    splits: dict[str, list[int]] = {s: [] for s in SPLITS}
    for diagnosis in DIAGNOSIS_COUNTS:
        rows = [i for i, d in enumerate(diagnoses) if d == diagnosis]
        rng.shuffle(rows)
        n_train = round(len(rows) * sizes["train"] / total)
        n_valid = round(len(rows) * sizes["valid"] / total)
        splits["train"] += rows[:n_train]
        splits["valid"] += rows[n_train:n_train + n_valid]
        splits["test"] += rows[n_train + n_valid:]
    return {s: sorted(rows) for s, rows in splits.items()}


def _file_names(rng: np.random.Generator, n_cases: int) -> list[tuple[str, str]]:
    """(clinic, derm) paths relative to images/, in the real release's style:
    three-letter folders, consecutive numbers, some names upper-case `.JPG`."""
    n_folders = max(1, n_cases // 60)
    folders = [f"S{chr(65 + i % 26)}{'L' if i % 3 == 0 else 'l'}" for i in range(n_folders)]
    counters = {f: 1 for f in folders}
    names = []
    for _ in range(n_cases):
        folder = folders[int(rng.integers(n_folders))]
        pair = []
        for _ in range(2):
            stem = f"{folder[:1]}{folder[1:].lower()}{counters[folder]:03d}"
            counters[folder] += 1
            pair.append(f"{folder}/{stem.upper()}.JPG" if rng.random() < 0.15 else f"{folder}/{stem}.jpg")
        names.append((pair[0], pair[1]))
    return names


def _render_and_write(job: tuple[int, int, dict, dict, str, str, str]) -> None:
    seed, row, classes, raw, root, clinic, derm = job
    clinical, dermoscopy = render_case(classes, raw, np.random.default_rng([seed, row]))
    for rel, img, quality in ((clinic, clinical, 85), (derm, dermoscopy, 92)):
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise DataError(f"{rel}: JPEG encoding failed")
        (Path(root) / IMAGES_DIR / rel).write_bytes(buf.tobytes())


def _meta_row(row: int, classes: dict[str, str], raw: dict[str, str], clinic: str, derm: str,
              rng: np.random.Generator) -> dict[str, str]:
    diagnosis = classes["DIAG"]
    score = L.seven_point_score(classes)
    record = {"case_num": str(row + 1), "seven_point_score": str(score),
              "clinic": clinic, "derm": derm, "case_id": "", "notes": ""}
    for task in L.TASKS:
        record[task.column] = raw[task.key]
    record["level_of_diagnostic_difficulty"] = _DIFFICULTY[min(2, int(rng.integers(0, 2)) + (score >= 3))]
    for column, values in L.METADATA_FIELDS.items():
        record[column] = _pick(rng, dict(zip(values, METADATA_GIVEN_DIAGNOSIS[column][diagnosis])))
    record["management"] = "excision" if diagnosis in ("MEL", "BCC") else _MANAGEMENT[int(rng.integers(3))]
    return record


def write_synthetic_release(out: str | Path, cases: int = 600, seed: int = 0, workers: int = 1,
                            force: bool = False,
                            progress: Callable[[Iterable, int], Iterable] | None = None,
                            split_sizes: Mapping[str, int] = SPLIT_SIZES) -> Path:
    """Write a synthetic release to `out` and return its path.

    `split_sizes`: the splits' relative sizes, stratified by diagnosis (default: the real release's).

    Written under a temporary name and renamed when complete: an interrupted
    run leaves no half-written release. An existing `out` is replaced only
    with `force`. `progress(iterable, total)` wraps the drawing loop.
    """
    out = Path(out)
    if cases < 10:
        raise DataError(f"{out}: --cases must be at least 10 (got {cases}) so every split has cases")
    with staged_directory(out, force=force, error=DataError) as tmp:
        rng = np.random.default_rng(seed)
        drawn = [sample_labels(rng) for _ in range(cases)]
        names = _file_names(rng, cases)
        splits = _stratified_splits(rng, [classes["DIAG"] for classes, _ in drawn], split_sizes)
        (tmp / "meta").mkdir(parents=True)
        for folder in {Path(p).parent for pair in names for p in pair}:
            (tmp / IMAGES_DIR / folder).mkdir(parents=True, exist_ok=True)
        with open(tmp / META_FILE, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=META_COLUMNS)
            writer.writeheader()
            for row, ((classes, raw), (clinic, derm)) in enumerate(zip(drawn, names)):
                writer.writerow(_meta_row(row, classes, raw, clinic, derm, rng))
        for split in SPLITS:
            with open(tmp / index_file(split), "w", newline="", encoding="utf-8") as f:
                f.write("indexes\n" + "".join(f"{i}\n" for i in splits[split]))

        jobs = [(seed, row, classes, raw, str(tmp), clinic, derm)
                for row, ((classes, raw), (clinic, derm)) in enumerate(zip(drawn, names))]
        if workers > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                done = pool.map(_render_and_write, jobs, chunksize=8)
                for _ in (progress(done, len(jobs)) if progress else done):
                    pass
        else:
            for job in (progress(jobs, len(jobs)) if progress else jobs):
                _render_and_write(job)
    return out
