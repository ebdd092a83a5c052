"""Start the clinic app: check the bundle and the store, settle access, then listen (uvicorn)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from edgederm.errors import EdgeDermError
from edgederm.runtime import load_bundle
from edgederm.runtime.bundle import read_manifest
from edgederm.serve.access import AccessCode, is_loopback
from edgederm.serve.app import Clinic, create_app
from edgederm.serve.store import CaseStore


def build_clinic(bundle: Path, data_dir: Path, host: str = "127.0.0.1", max_upload_mb: float = 25.0,
                 device: str = "CPU", backend: str | None = None,
                 reset_access_code: bool = False) -> tuple[Clinic, str | None]:
    """Everything the app needs, checked before anything listens: the bundle (checksums verified), the case
    store, and, beyond loopback, the access code. Returns (clinic, the new plain code when one was made)."""
    if max_upload_mb <= 0:
        raise EdgeDermError(f"--max-upload-mb must be positive, got {max_upload_mb:g}")
    if reset_access_code and is_loopback(host):
        raise EdgeDermError("--reset-access-code applies with --host beyond this machine (127.0.0.1 needs no code)")
    inputs = [i["name"] for i in read_manifest(bundle, verify=False)["inputs"]]
    if inputs != ["clinical", "dermoscopy"]:
        # the page asks for both photos, and the case store keeps both
        raise EdgeDermError(f"{bundle}: the clinic app takes two-photo bundles; this one takes {', '.join(inputs)} "
                            "(use `edgederm diagnose` for it)")
    predictor = load_bundle(bundle, device=device, backend=backend)
    store = CaseStore(data_dir)
    access, new_code = None, None
    if not is_loopback(host):
        access, new_code = AccessCode.load_or_create(data_dir, reset=reset_access_code)
    return Clinic(predictor, store, access, max_upload_mb, host=host), new_code


def access_note(clinic: Clinic, new_code: str | None) -> str | None:
    if clinic.access is None:
        return None
    if new_code:
        return f"access code (shown this once, stored hashed in {clinic.access.path}): {new_code}"
    return f"access code: the one printed at first start ({clinic.access.path}; --reset-access-code for a new one)"


def serve(clinic: Clinic, host: str, port: int, log: Callable[[str], None] = print) -> None:
    import uvicorn
    shown = f"[{host}]" if ":" in host else host
    log(f"EdgeDerm clinic app: http://{shown}:{port}/  (bundle {clinic.bundle.name}, {clinic.bundle.precision}; "
        f"cases in {clinic.store.root}; Ctrl-C stops it)")
    logging.basicConfig(level=logging.WARNING)
    try:
        uvicorn.run(create_app(clinic), host=host, port=port, log_level="warning", access_log=False,
                    server_header=False)
    finally:
        clinic.store.close()
