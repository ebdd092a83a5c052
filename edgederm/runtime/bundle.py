"""Deployment bundles: a directory of model files plus `manifest.json`.

The manifest records the format version, target, backend and precision, input
and output names and shapes, preprocessing, the label schema, the branch
weights, the source checkpoint, metrics at export time, and the sha256 of
every file. `read_manifest` refuses a bundle whose files do not match.

Bundles are built in a hidden temporary directory beside the destination and
renamed into place when complete: an interrupted export leaves no bundle.

The one home of the bundle format: the device reads bundles with this module
(numpy-free and torch-free), and `edgederm export` and `engine build` write
them through it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from edgederm.checksums import sha256_file
from edgederm.errors import EdgeDermError
from edgederm.staging import staged_directory

FORMAT = "edgederm-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class BundleError(EdgeDermError):
    """A bundle that is missing, incomplete, altered or of another format."""


def file_entries(directory: Path) -> dict[str, dict]:
    """sha256 and size of every file in a bundle except the manifest."""
    return {str(p.relative_to(directory)): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != MANIFEST
            and not p.name.endswith(".partial")}


def write_manifest(directory: Path, manifest: dict) -> dict:
    """Hash the files, write manifest.json atomically; returns the manifest written."""
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest, "files": file_entries(directory)}
    tmp = directory / (MANIFEST + ".partial")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, directory / MANIFEST)
    return manifest


def read_manifest(bundle: str | Path, verify: bool = True) -> dict:
    """The manifest of a bundle, after checking every listed file's sha256."""
    bundle = Path(bundle)
    path = bundle / MANIFEST
    if not bundle.is_dir():
        raise BundleError(f"{bundle}: not a bundle directory")
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{bundle}: no {MANIFEST} (not a bundle, or an interrupted export)") from None
    except json.JSONDecodeError as e:
        raise BundleError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: not an EdgeDerm bundle manifest")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise BundleError(f"{path}: bundle format {manifest['format_version']} is newer than this EdgeDerm "
                          f"reads ({FORMAT_VERSION}); upgrade edgederm")
    if verify:
        for name, entry in manifest.get("files", {}).items():
            file = bundle / name
            if not file.is_file():
                raise BundleError(f"{bundle}: {name} is listed in the manifest but missing")
            if file.stat().st_size != entry["bytes"] or sha256_file(file) != entry["sha256"]:
                raise BundleError(f"{bundle}: {name} does not match its sha256 in the manifest "
                                  "(changed or damaged since export); re-export or re-copy the bundle")
    return manifest


def staged_bundle(destination: Path, force: bool = False):
    """A temporary directory that becomes the bundle on success (edgederm.staging)."""
    return staged_directory(destination, force=force, error=BundleError)
