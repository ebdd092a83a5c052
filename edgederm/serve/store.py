"""The clinic app's case store: SQLite (WAL) plus content-addressed photo copies.

    DATA_DIR/
      cases.sqlite3              one row per case; schema version in PRAGMA user_version
      photos/ab/abcdef....jpg    each photo once, named by the sha256 of its bytes

Nothing is lost, in this order: a case's photos are written under a temporary
name, fsynced, renamed into place and their folder fsynced; only then is the
row inserted and committed, in one transaction with `synchronous=FULL` (the
commit is on disk when it returns). A server killed at any point loses at
most the case in flight: a photo without a row is harmless (the next case
with the same bytes reuses it), a row without its photos cannot exist.

A store written by a newer EdgeDerm (higher schema version) is refused, in
one line: an older program must not half-understand newer rows.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from edgederm.errors import EdgeDermError

SCHEMA_VERSION = 1
DATABASE = "cases.sqlite3"
PHOTOS = "photos"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cases (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    created         TEXT NOT NULL,      -- UTC, ISO 8601
    day             TEXT NOT NULL,      -- the clinic's local date, YYYY-MM-DD: what "today's cases" lists
    visit_id        TEXT NOT NULL,      -- the clinic's own reference, may be empty
    clinical_name   TEXT NOT NULL,      -- file names as chosen on the page (shown, never used as paths)
    derm_name       TEXT NOT NULL,
    clinical_sha256 TEXT NOT NULL,
    derm_sha256     TEXT NOT NULL,
    bundle_name     TEXT NOT NULL,
    bundle_precision TEXT NOT NULL,
    bundle_sha256   TEXT NOT NULL,      -- sha256 of the bundle's manifest.json (which lists every file's)
    prediction      TEXT NOT NULL       -- JSON: edgederm.runtime.Prediction.to_dict()
);
CREATE INDEX IF NOT EXISTS cases_by_day ON cases(day, id);
"""


class StoreError(EdgeDermError):
    """A case store that cannot be opened or written."""


@dataclass(frozen=True)
class BundleIdentity:
    name: str
    precision: str
    sha256: str


@dataclass
class Photo:
    name: str          # as uploaded, for display
    data: bytes
    suffix: str        # ".jpg", ".png", ...: what the bytes are


@dataclass
class Case:
    id: int
    created: str
    day: str
    visit_id: str
    clinical_name: str
    derm_name: str
    clinical_sha256: str
    derm_sha256: str
    bundle: BundleIdentity
    prediction: dict

    def to_dict(self) -> dict:
        return {"id": self.id, "created": self.created, "day": self.day, "visit_id": self.visit_id,
                "clinical": {"name": self.clinical_name, "sha256": self.clinical_sha256},
                "derm": {"name": self.derm_name, "sha256": self.derm_sha256},
                "bundle": {"name": self.bundle.name, "precision": self.bundle.precision,
                           "sha256": self.bundle.sha256},
                "prediction": self.prediction}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CaseStore:
    """Thread-safe: one connection, used under a lock (SQLite writes are serialised anyway)."""

    def __init__(self, data_dir: Path):
        self.root = Path(data_dir)
        self.photos = self.root / PHOTOS
        database = self.root / DATABASE
        try:
            # patients' photos: owner-only folders (an existing folder keeps its mode)
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.photos.mkdir(mode=0o700, exist_ok=True)
            for leftover in self.photos.glob("*/.*.partial"):    # photos a killed server was writing
                leftover.unlink(missing_ok=True)
            self._db = sqlite3.connect(database, check_same_thread=False, isolation_level=None)
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:       # refused before anything (even the journal mode) changes
                self._db.close()
                raise StoreError(f"{database}: case store schema version {version} is newer than this "
                                 f"EdgeDerm's ({SCHEMA_VERSION}); use the EdgeDerm that wrote it, or another "
                                 "--data-dir")
            self._db.execute("PRAGMA busy_timeout = 5000")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            if version == 0:     # a new store: tables and version in one transaction
                self._db.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"{database}: cannot open the case store ({e})") from None
        self._lock = threading.Lock()

    def _transaction(self):
        db = self._db

        class Transaction:
            def __enter__(self):
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self, kind, value, tb):
                db.execute("COMMIT" if kind is None else "ROLLBACK")
        return Transaction()

    def close(self) -> None:
        self._db.close()

    # --- photos ---------------------------------------------------------------
    def photo_path(self, sha256: str, suffix: str) -> Path:
        return self.photos / sha256[:2] / f"{sha256}{suffix}"

    def _keep_photo(self, photo: Photo) -> str:
        """Write the photo once under its sha256, durably; returns the sha256."""
        sha = hashlib.sha256(photo.data).hexdigest()
        path = self.photo_path(sha, photo.suffix)
        if path.is_file() and path.stat().st_size == len(photo.data):
            # another request may have just renamed it in without its folder synced yet: sync before the row
            _fsync_dir(path.parent)
            return sha
        path.parent.mkdir(mode=0o700, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.partial")
        with open(tmp, "wb") as f:
            f.write(photo.data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        return sha

    def find_photo(self, case_id: int, which: str) -> tuple[Path, str] | None:
        """(path, suffix) of a stored case's clinical or dermoscopy photo; None if there is no such case."""
        column = {"clinical": "clinical_sha256", "derm": "derm_sha256"}[which]
        with self._lock:
            row = self._db.execute(f"SELECT {column} FROM cases WHERE id = ?", (case_id,)).fetchone()
        if row is None:
            return None
        matches = sorted((self.photos / row[0][:2]).glob(f"{row[0]}.*"))
        return (matches[0], matches[0].suffix) if matches else None

    # --- cases ----------------------------------------------------------------
    def add(self, visit_id: str, clinical: Photo, derm: Photo, bundle: BundleIdentity, prediction: dict,
            now: datetime | None = None) -> Case:
        now = now or datetime.now(timezone.utc)
        day = now.astimezone().date().isoformat()
        try:
            shas = [self._keep_photo(clinical), self._keep_photo(derm)]
        except OSError as e:
            raise StoreError(f"{self.photos}: cannot store the photos ({e})") from None
        values = (now.isoformat(timespec="seconds"), day, visit_id, clinical.name, derm.name, *shas,
                  bundle.name, bundle.precision, bundle.sha256, json.dumps(prediction))
        with self._lock:
            try:
                with self._transaction():
                    cursor = self._db.execute(
                        "INSERT INTO cases (created, day, visit_id, clinical_name, derm_name, clinical_sha256, "
                        "derm_sha256, bundle_name, bundle_precision, bundle_sha256, prediction) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", values)
            except sqlite3.Error as e:
                raise StoreError(f"{self.root / DATABASE}: cannot record the case ({e})") from None
        return self.get(cursor.lastrowid)

    def get(self, case_id: int) -> Case | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM cases WHERE id = ?", (case_id,)).fetchone()
        return None if row is None else _case(row)

    def on_day(self, day: str) -> list[Case]:
        """The cases of one local date, newest first."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM cases WHERE day = ? ORDER BY id DESC", (day,)).fetchall()
        return [_case(r) for r in rows]

    def days(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT DISTINCT day FROM cases ORDER BY day DESC")]


def _case(row: tuple) -> Case:
    (case_id, created, day, visit_id, clinical_name, derm_name, clinical_sha, derm_sha,
     bundle_name, precision, bundle_sha, prediction) = row
    return Case(case_id, created, day, visit_id, clinical_name, derm_name, clinical_sha, derm_sha,
                BundleIdentity(bundle_name, precision, bundle_sha), json.loads(prediction))


def today() -> str:
    return datetime.now(timezone.utc).astimezone().date().isoformat()
