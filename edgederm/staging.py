"""Directories that appear whole or not at all.

Work happens in a hidden temporary sibling; on success it is renamed into
place (replacing an existing one only when asked), on any failure or
interruption it is removed. A synthetic release and an export bundle are both
written this way: no half-written result is ever left, and nothing existing
is overwritten by accident.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

from edgederm.errors import EdgeDermError


STAGED_PREFIX, STAGED_SUFFIX = ".", ".partial-"     # DEST is built as .DEST.partial-PID beside it


def destination_name(directory: Path) -> str:
    """The name a staged directory will have (its own name when it is not a staged one): what a file written
    inside it names the folder by."""
    name = directory.name
    if name.startswith(STAGED_PREFIX) and STAGED_SUFFIX in name:
        return name[len(STAGED_PREFIX):name.rindex(STAGED_SUFFIX)]
    return name


@contextlib.contextmanager
def staged_directory(destination: Path, force: bool = False,
                     error: type[EdgeDermError] = EdgeDermError) -> Iterator[Path]:
    """Yield an empty temporary directory that becomes `destination` on success."""
    if destination.exists() and not force:
        raise error(f"{destination}: already exists (use --force to replace it)")
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = destination.parent / f"{STAGED_PREFIX}{destination.name}{STAGED_SUFFIX}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if destination.exists():   # --force: swap the new one in, then drop the old one
            old = destination.parent / f".{destination.name}.old-{os.getpid()}"
            destination.rename(old)
            tmp.rename(destination)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(destination)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> Path:
    """Write `path` whole or not at all (a sibling temporary file renamed over it)."""
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path
