"""`edgederm serve`: the clinic app, an offline web page on the device.

    GET  /                          the page (static/index.html; its script and style ship in the package)
    GET  /api/info                  the bundle that answers, the label schema, the disclaimer
    POST /api/cases                 multipart: clinical, derm (photos), visit_id -> the stored case (201)
    GET  /api/cases?day=YYYY-MM-DD  that day's cases, newest first (default: today)
    GET  /api/cases/{id}            one case
    GET  /api/cases/{id}/photo/{clinical|derm}
    GET  /api/cases.csv?day=...     the day's cases, columns as `edgederm diagnose --pairs` writes
    GET  /login, POST /login        only when listening beyond this machine (edgederm/serve/access.py)

Device-side: FastAPI, numpy, OpenCV and the bundle's runtime; no torch, timm
or nncf. Photos are decoded only by `edgederm.preprocess` (size checked from
the header before decoding), so a bad photo is the same one-line message
`diagnose` gives, shown on the page with a 4xx. One predictor serves every
request: photos are decoded on the request threads in parallel, the model
runs under a lock (an OpenVINO infer request is not thread-safe).
No request value is ever used as a file path: photos are read back by case
id, from the content hash the store recorded.
"""
from __future__ import annotations

import csv
import io
import logging
import os
import re
import threading
from dataclasses import dataclass
from datetime import date
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from edgederm import labels as L
from edgederm.checksums import sha256_file
from edgederm.errors import EdgeDermError
from edgederm.preprocess import decode_image, preprocess_image
from edgederm.runtime import DISCLAIMER, Prediction, Predictor
from edgederm.runtime.diagnose import RESULT_COLUMNS, result_fields
from edgederm.serve.access import COOKIE, SESSION_HOURS, AccessCode, is_loopback
from edgederm.serve.store import BundleIdentity, CaseStore, Photo, StoreError, today

STATIC = files("edgederm.serve") / "static"
VISIT_ID_MAX = 64
NAME_MAX = 120
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}
# The page needs nothing but its own files; blob: lets it preview the photos chosen on this device.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; object-src 'none'; base-uri 'none'; "
                               "frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
_SUFFIXES = ((b"\xff\xd8", ".jpg", "image/jpeg"), (b"\x89PNG", ".png", "image/png"))
log = logging.getLogger("edgederm.serve")


def bundle_identity(predictor: Predictor) -> BundleIdentity:
    """Name, precision and the sha256 of manifest.json, which itself holds every file's sha256."""
    return BundleIdentity(predictor.bundle.name, predictor.precision, sha256_file(predictor.bundle / "manifest.json"))


def _kind(data: bytes) -> tuple[str, str]:
    return next(((s, t) for magic, s, t in _SUFFIXES if data.startswith(magic)), (".img", "application/octet-stream"))


# What the app takes: the formats whose pixel count edgederm.preprocess reads from the header before decoding
# (a few bytes of BMP, TIFF or WebP can claim gigapixels). Phones and dermatoscopes save JPEG; browsers
# hand over camera photos as JPEG.
TAKEN = {".jpg", ".png"}


@dataclass
class Upload:
    label: str          # "clinical" / "dermoscopy": names the photo in messages
    name: str
    data: bytes

    @property
    def source(self) -> str:
        return f"{self.label} photo {self.name!r}"


class Clinic:
    """The app's state: one predictor (model calls serialised), the case store, the access code."""

    def __init__(self, predictor: Predictor, store: CaseStore, access: AccessCode | None, max_upload_mb: float,
                 host: str = "127.0.0.1"):
        self.predictor, self.store, self.access, self.host = predictor, store, access, host
        self.max_upload_bytes = int(max_upload_mb * 1024 * 1024)
        self.bundle = bundle_identity(predictor)
        self._model_lock = threading.Lock()
        # decoded photos are the app's big allocations (up to 150 MP x 3 bytes each): a few at a time
        self._decoding = threading.BoundedSemaphore(max(2, os.cpu_count() or 2))

    def diagnose(self, visit_id: str, clinical: Upload, derm: Upload) -> dict:
        """Decode, predict and store one case; EdgeDermError for a photo the model cannot take."""
        for upload in (clinical, derm):
            if _kind(upload.data)[0] not in TAKEN:
                raise EdgeDermError(f"{upload.source}: not a JPEG or PNG photo (the formats the app takes)")
        cfg = self.predictor.preprocess
        inputs = []
        for u in (clinical, derm):
            with self._decoding:
                inputs.append(preprocess_image(decode_image(u.data, u.source, cfg.min_decoded_side), cfg, u.source))
        with self._model_lock:
            row = self.predictor.run(inputs[0][None], inputs[1][None])[0]
        prediction = Prediction.from_row(row, self.predictor.clinical).to_dict()
        photos = [Photo(u.name, u.data, _kind(u.data)[0]) for u in (clinical, derm)]
        return self.store.add(visit_id, *photos, self.bundle, prediction).to_dict()

    def info(self) -> dict:
        return {
            "bundle": {"name": self.bundle.name, "precision": self.bundle.precision, "sha256": self.bundle.sha256,
                       "backend": self.predictor.backend},
            "disclaimer": DISCLAIMER,
            "today": today(),
            "max_upload_mb": self.max_upload_bytes / 1024 / 1024,
            "tasks": [{"key": t.key, "title": t.title,
                       "classes": [{"key": c, "name": L.class_name(t.key, c)} for c in t.classes]} for t in L.TASKS],
            "seven_point": {"criteria": [{"task": t, "class": c, "points": p} for t, c, p in L.SEVEN_POINT_CRITERIA],
                            "threshold": L.SEVEN_POINT_THRESHOLD},
        }


def _day(day: str | None) -> str:
    if day is None:
        return today()
    try:
        if _DAY.fullmatch(day):
            return date.fromisoformat(day).isoformat()
    except ValueError:
        pass
    raise HTTPException(400, f"day must be a date, YYYY-MM-DD, got {day[:20]!r}")


def _csv_text(value: str) -> str:
    """A cell a spreadsheet will not run as a formula (visit ids and file names come from users)."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


async def _capped_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` (declared or not)."""
    declared = request.headers.get("content-length")
    too_big = f"upload larger than the {limit / 1024 / 1024:.3g} MB limit (--max-upload-mb); send smaller photos"
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, too_big)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, too_big)
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_case_form(request: Request, limit: int) -> tuple[str, Upload, Upload]:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise HTTPException(415, "send the photos as multipart/form-data (fields clinical, derm, visit_id)")
    body = await _capped_body(request, limit)

    async def stream():
        yield body
    try:
        form = await MultiPartParser(request.headers, stream(), max_files=2, max_fields=1,
                                     max_part_size=4 * VISIT_ID_MAX).parse()
    except MultiPartException as e:
        raise HTTPException(400, f"unreadable upload ({e})") from None
    uploads = []
    try:
        for field, label in (("clinical", "clinical"), ("derm", "dermoscopy")):
            item = form.get(field)
            if not isinstance(item, UploadFile):
                raise HTTPException(422, f"the {label} photo is missing: choose one")
            name = Path(item.filename or field).name[:NAME_MAX]      # display only: never a path
            data = await item.read()
            if not data:
                raise HTTPException(422, f"{label} photo {name!r}: empty file")
            uploads.append(Upload(label, name, data))
        visit_id = str(form.get("visit_id") or "").strip()
    finally:
        await form.close()
    if len(visit_id) > VISIT_ID_MAX or not visit_id.isprintable():
        raise HTTPException(422, f"visit id: at most {VISIT_ID_MAX} printable characters")
    return visit_id, uploads[0], uploads[1]


def _login_page(message: str = "") -> str:
    from html import escape
    note = f'<p class="error" role="alert">{escape(message)}</p>' if message else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>EdgeDerm: access code</title><link rel="stylesheet" href="/static/app.css"></head>
<body><main class="login"><h1>EdgeDerm</h1>
<form method="post" action="/login"><label for="code">Access code (printed when the app was first started)</label>
<input id="code" name="code" inputmode="numeric" autocomplete="off" required autofocus>
<button type="submit">Open</button></form>{note}</main></body></html>"""


def create_app(clinic: Clinic) -> FastAPI:
    app = FastAPI(title="EdgeDerm clinic", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    local = is_loopback(clinic.host)

    def refusal(request: Request):
        """Why this request may not proceed, as a response; None when it may."""
        hostname = (request.url.hostname or "").strip("[]")
        if local and hostname not in LOOPBACK_NAMES:
            # DNS rebinding: a web page whose name resolves to 127.0.0.1 would otherwise read the cases
            return JSONResponse({"detail": f"unknown host {hostname[:60]!r}: open http://127.0.0.1:{request.url.port}/"},
                                421)
        if request.method not in ("GET", "HEAD"):
            origin = request.headers.get("origin")
            same = origin is None or origin == f"{request.url.scheme}://{request.url.netloc}"
            if not same or request.headers.get("sec-fetch-site") == "cross-site":
                # another site's page posting into the clinic's store (browsers post forms cross-site freely)
                return JSONResponse({"detail": "requests from other sites are refused"}, 403)
        open_paths = request.url.path.startswith("/static/") or request.url.path == "/login"
        if clinic.access is not None and not open_paths and not clinic.access.valid_session(
                request.cookies.get(COOKIE)):
            return (JSONResponse({"detail": "access code needed: open the page and enter it"}, 401)
                    if request.url.path.startswith("/api/") else RedirectResponse("/login", 303))
        return None

    @app.middleware("http")
    async def guard(request: Request, call_next):
        try:
            response = refusal(request) or await call_next(request)
        except Exception:        # never a traceback to the browser; the server log has it
            log.exception("request failed: %s %s", request.method, request.url.path)
            response = JSONResponse({"detail": "internal error: see the server's log"}, 500)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.get("/", response_class=FileResponse)
    def page():
        return FileResponse(str(STATIC / "index.html"), media_type="text/html")

    @app.get("/login", response_class=HTMLResponse)
    def login_page():
        return HTMLResponse(_login_page())

    @app.post("/login")
    async def login(request: Request):
        if clinic.access is None:
            return RedirectResponse("/", 303)
        try:
            form = await request.form(max_files=0, max_fields=1, max_part_size=256)
        except MultiPartException:
            return HTMLResponse(_login_page("Enter the access code."), 400)
        client = request.client.host if request.client else "?"
        ok, wait = await run_in_threadpool(clinic.access.try_code, str(form.get("code") or ""), client)
        if wait:
            return HTMLResponse(_login_page(f"Too many wrong codes: wait {wait} s and try again."), 429)
        if not ok:
            return HTMLResponse(_login_page("Wrong access code."), 401)
        response = RedirectResponse("/", 303)
        response.set_cookie(COOKIE, clinic.access.new_session(), max_age=SESSION_HOURS * 3600, httponly=True,
                            samesite="strict", path="/")
        return response

    @app.get("/api/info")
    def info():
        return clinic.info()

    @app.post("/api/cases", status_code=201)
    async def add_case(request: Request):
        visit_id, clinical, derm = await _read_case_form(request, clinic.max_upload_bytes)
        try:
            return await run_in_threadpool(clinic.diagnose, visit_id, clinical, derm)
        except StoreError as e:          # the device's fault (disk full, folder gone), not the photos'
            log.error("%s", e)
            raise HTTPException(503, f"the case could not be saved ({e}); nothing was stored") from None
        except EdgeDermError as e:       # a photo the model cannot take
            raise HTTPException(422, str(e)) from None

    @app.get("/api/cases")
    def cases(day: str | None = None):
        """{"day": the day listed (today unless asked), "cases": newest first}."""
        day = _day(day)
        return {"day": day, "cases": [c.to_dict() for c in clinic.store.on_day(day)]}

    @app.get("/api/cases.csv")
    def cases_csv(day: str | None = None):
        day = _day(day)
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=RESULT_COLUMNS, restval="", lineterminator="\n")
        writer.writeheader()
        for case in reversed(clinic.store.on_day(day)):         # oldest first, as the day went
            writer.writerow({"id": _csv_text(case.visit_id) or f"case{case.id}", "clinical": _csv_text(case.clinical_name),
                             "derm": _csv_text(case.derm_name), "status": "ok", "error": "",
                             **result_fields(case.prediction)})
        return Response(out.getvalue(), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="edgederm-cases-{day}.csv"'})

    @app.get("/api/cases/{case_id}")
    def one_case(case_id: int):
        case = clinic.store.get(case_id)
        if case is None:
            raise HTTPException(404, f"no case {case_id}")
        return case.to_dict()

    @app.get("/api/cases/{case_id}/photo/{which}")
    def photo(case_id: int, which: str):
        if which not in ("clinical", "derm"):
            raise HTTPException(404, "photo must be clinical or derm")
        found = clinic.store.find_photo(case_id, which)
        if found is None:
            raise HTTPException(404, f"no {which} photo for case {case_id}")
        path, suffix = found
        media = next((t for _, s, t in _SUFFIXES if s == suffix), "application/octet-stream")
        return FileResponse(str(path), media_type=media)

    return app
