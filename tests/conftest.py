"""Shared fixtures: a small synthetic release written once per test session,
and helpers that write releases by hand for the reader's error cases."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgederm.data.release import META_COLUMNS
from edgederm.data.synth import write_synthetic_release


@pytest.fixture(scope="session")
def synthetic_release(tmp_path_factory) -> Path:
    """40 synthetic cases; read-only for tests (copy it to change it)."""
    return write_synthetic_release(tmp_path_factory.mktemp("synth") / "release_v0", cases=40, seed=3, workers=1)


@pytest.fixture
def release_copy(synthetic_release, tmp_path) -> Path:
    """A private copy of the synthetic release that a test may break."""
    return Path(shutil.copytree(synthetic_release, tmp_path / "release_v0"))


def write_jpeg(path: Path, rgb: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if rgb is None:
        rgb = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def read_meta(root: Path) -> list[dict[str, str]]:
    with open(root / "meta" / "meta.csv", newline="") as f:
        return list(csv.DictReader(f))


def write_meta(root: Path, rows: list[dict[str, str]], columns=META_COLUMNS) -> None:
    (root / "meta").mkdir(parents=True, exist_ok=True)
    with open(root / "meta" / "meta.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_indexes(root: Path, splits: dict[str, list[int]]) -> None:
    for split, rows in splits.items():
        (root / "meta" / f"{split}_indexes.csv").write_text("indexes\n" + "".join(f"{i}\n" for i in rows))
