"""Reader for the seven-point checklist dataset in its release_v0 layout.

    release_v0/
      images/<folder>/<file>            768 x 512 JPEG, file-name case varies
      meta/meta.csv                     one row per case, 19 columns (META_COLUMNS)
      meta/{train,valid,test}_indexes.csv   column `indexes`: 0-based rows of meta.csv

`scan_release` reads everything it can and collects every problem as a
one-line message naming the file, line and value; `read_release` returns the
release or raises DataError with the first problem. Labels are grouped by
`edgederm.labels`.
"""
from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from edgederm import labels as L
from edgederm.errors import DataError, ImageError, LabelError
from edgederm.preprocess import read_image

META_COLUMNS: tuple[str, ...] = (
    "case_num", "diagnosis", "seven_point_score", "pigment_network", "streaks",
    "pigmentation", "regression_structures", "dots_and_globules", "blue_whitish_veil",
    "vascular_structures", "level_of_diagnostic_difficulty", "elevation", "location",
    "sex", "management", "clinic", "derm", "case_id", "notes",
)
SPLITS: tuple[str, ...] = ("train", "valid", "test")
META_FILE = Path("meta") / "meta.csv"
IMAGES_DIR = Path("images")


def index_file(split: str) -> Path:
    return Path("meta") / f"{split}_indexes.csv"


@dataclass(frozen=True)
class Case:
    row: int                   # 0-based row of meta.csv: what the index files hold
    case_num: str
    clinical: Path
    derm: Path
    labels: tuple[int, ...]    # class index per task, in labels.TASKS order
    # meta.csv's sex / location / elevation as written (labels.METADATA_FIELDS); checked where a model uses
    # them (labels.encode_metadata), so an image-only model reads a release whatever they hold
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def case_id(self) -> str:
        return self.case_num

    def label_dict(self) -> dict[str, int]:
        return dict(zip(L.TASK_KEYS, self.labels))


@dataclass
class Release:
    root: Path
    cases: dict[int, Case]               # by meta.csv row; rows with problems are absent
    splits: dict[str, list[int]]         # split name -> meta.csv rows, in file order

    def split(self, name: str) -> list[Case]:
        if name not in self.splits:
            raise DataError(f"{self.root}: unknown split {name!r} (choose from {', '.join(SPLITS)})")
        return [self.cases[row] for row in self.splits[name] if row in self.cases]

    def iter_split(self, name: str) -> Iterator[tuple[np.ndarray, np.ndarray, tuple[int, ...], str]]:
        """Yield (clinical RGB, dermoscopy RGB, labels, case id) for every case of a split."""
        for case in self.split(name):
            yield read_image(case.clinical), read_image(case.derm), case.labels, case.case_id

    def class_counts(self, name: str) -> dict[str, list[int]]:
        counts = {t.key: [0] * t.num_classes for t in L.TASKS}
        for case in self.split(name):
            for key, value in zip(L.TASK_KEYS, case.labels):
                counts[key][value] += 1
        return counts


@dataclass
class ScanResult:
    release: Release
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class CaseInsensitiveResolver:
    """Finds `images/<folder>/<file>` when the case on disk differs from meta.csv
    (the release mixes `.JPG` and `.jpg`; copies made on Windows or macOS may
    change case). An exact match always wins."""

    def __init__(self, root: Path):
        self.root = root
        self._listings: dict[Path, dict[str, list[str]]] = {}

    def _listing(self, directory: Path) -> dict[str, list[str]]:
        if directory not in self._listings:
            names: dict[str, list[str]] = {}
            try:
                for entry in os.scandir(directory):
                    names.setdefault(entry.name.lower(), []).append(entry.name)
            except OSError:
                pass
            self._listings[directory] = names
        return self._listings[directory]

    def resolve(self, relative: str) -> Path | None:
        parts = [p for p in relative.replace("\\", "/").split("/") if p not in ("", ".")]
        if not parts or ".." in parts:
            return None
        exact = self.root.joinpath(*parts)
        if exact.is_file():
            return exact
        current = self.root
        for part in parts:
            matches = self._listing(current).get(part.lower(), [])
            if part in matches:      # this part's case is right: keep it
                current = current / part
            elif len(matches) == 1:
                current = current / matches[0]
            else:                    # none, or ambiguous (two names differing only in case)
                return None
        return current if current.is_file() else None


def _blank(row: list[str]) -> bool:
    """A line pandas skips (skip_blank_lines): empty or whitespace only. A line of bare
    commas is NOT blank: pandas keeps it as a row, so the index files count it."""
    return not row or (len(row) == 1 and not row[0].strip())


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (first line number, fields) of each non-blank record; a quoted
    field may span lines, so line numbers come from the reader, not a count."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader, rows, previous = csv.reader(f), [], 0
            for row in reader:
                if not _blank(row):
                    rows.append((previous + 1, row))
                previous = reader.line_num
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise DataError(f"{path}: not a readable CSV file ({e})") from None
    if not rows:
        raise DataError(f"{path}: empty file, expected a header row")
    return [h.strip() for h in rows[0][1]], rows[1:]


def _read_index_file(path: Path, n_rows: int, problems: list[str]) -> list[int]:
    header, rows = _read_csv(path)
    if "indexes" not in header:
        raise DataError(f"{path}: missing column 'indexes' (header is {','.join(header)})")
    col = header.index("indexes")
    indexes, seen = [], set()
    for line, row in rows:
        value = row[col].strip() if col < len(row) else ""
        try:
            index = int(value)
        except ValueError:
            problems.append(f"{path}: line {line}: index {value!r} is not an integer")
            continue
        if not 0 <= index < n_rows:
            problems.append(f"{path}: line {line}: index {index} out of range "
                            f"(meta.csv has {n_rows} rows: 0..{n_rows - 1})")
        elif index in seen:
            problems.append(f"{path}: line {line}: index {index} listed twice")
        else:
            seen.add(index)
            indexes.append(index)
    return indexes


def _parse_case(row: int, line: int, record: dict[str, str], meta_path: Path,
                resolver: CaseInsensitiveResolver, problems: list[str]) -> Case | None:
    where = f"{meta_path}: line {line} (row {row})"
    labels, ok = [], True
    for task in L.TASKS:
        try:
            labels.append(task.encode(record[task.column]))
        except LabelError as e:
            problems.append(f"{where}: {e}")
            ok = False
    paths = []
    for column in ("clinic", "derm"):
        relative = record[column].strip()
        resolved = resolver.resolve(relative) if relative else None
        if not relative:
            problems.append(f"{where}: column {column!r} is empty")
        elif resolved is None:
            problems.append(f"{where}: column {column!r}: image not found: "
                            f"{resolver.root / relative}")
        paths.append(resolved)
        ok = ok and resolved is not None
    if not ok:
        return None
    return Case(row=row, case_num=record["case_num"].strip(), clinical=paths[0], derm=paths[1],
                labels=tuple(labels), metadata={f: (record.get(f) or "").strip() for f in L.METADATA_FIELDS})


# One pass over meta.csv that collects every problem in file order; the checks share each row's state.
def scan_release(root: str | Path, verify_images: bool = False,
                 progress: Callable[[Iterable], Iterable] | None = None) -> ScanResult:
    """Read a release and collect every problem.

    Structural problems that make the rest meaningless (no meta.csv, a missing
    column, a missing index file) raise DataError at once. With
    `verify_images`, every image is decoded, which finds corrupt and truncated
    files; `progress` wraps that loop (a tqdm, say).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory (expected a derm7pt release_v0 folder)")
    meta_path = root / META_FILE
    header, rows = _read_csv(meta_path)
    missing = [c for c in META_COLUMNS if c not in header]
    if missing:
        raise DataError(f"{meta_path}: missing column{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(repr(c) for c in missing)}")
    problems: list[str] = []
    notes: list[str] = []
    resolver = CaseInsensitiveResolver(root / IMAGES_DIR)
    cases: dict[int, Case] = {}
    case_nums: dict[str, int] = {}
    records = rows
    for row_index, (line, row) in enumerate(records):
        if not any(cell.strip() for cell in row):
            problems.append(f"{meta_path}: line {line} (row {row_index}): empty row (no case, but it takes a row index)")
            continue
        if len(row) != len(header):
            problems.append(f"{meta_path}: line {line} (row {row_index}): expected {len(header)} "
                            f"fields, found {len(row)}")
            continue
        record = dict(zip(header, row))
        case = _parse_case(row_index, line, record, meta_path, resolver, problems)
        num = record["case_num"].strip()
        if num in case_nums:
            problems.append(f"{meta_path}: line {line} (row {row_index}): case_num {num!r} "
                            f"repeats row {case_nums[num]}")
        case_nums.setdefault(num, row_index)
        if case is not None:
            cases[row_index] = case
    n_rows = len(records)

    splits: dict[str, list[int]] = {}
    owner: dict[int, str] = {}
    for split in SPLITS:
        path = root / index_file(split)
        splits[split] = _read_index_file(path, n_rows, problems)
        for index in splits[split]:
            if index in owner:
                problems.append(f"{path}: index {index} is also in "
                                f"{root / index_file(owner[index])}")
            else:
                owner[index] = split
    unassigned = n_rows - len(owner)
    if unassigned:
        notes.append(f"{unassigned} of {n_rows} meta.csv rows are in no split")

    if verify_images:
        checked: set[Path] = set()
        items = [(row, path) for row, case in sorted(cases.items()) for path in (case.clinical, case.derm)]
        for row, path in (progress(items) if progress else items):
            if path in checked:     # a few images are shared by two cases
                continue
            checked.add(path)
            try:
                read_image(path)
            except ImageError as e:
                problems.append(f"{e} (row {row})")
    shared = [p for p, n in Counter(p for c in cases.values() for p in (c.clinical, c.derm)).items() if n > 1]
    if shared:
        notes.append(f"{len(shared)} image file(s) are used by more than one case")
    return ScanResult(Release(root, cases, splits), problems, notes)


def read_release(root: str | Path, verify_images: bool = False) -> Release:
    """The release, or DataError naming the first problem (and how many more)."""
    result = scan_release(root, verify_images=verify_images)
    if result.problems:
        more = len(result.problems) - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''}: run `edgederm data check {root}`)" if more else ""
        raise DataError(result.problems[0] + suffix)
    return result.release
