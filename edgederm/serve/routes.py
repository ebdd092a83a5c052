"""The clinic app's routes (edgederm/serve/app.py lists them): `pages`, the page and the access-code
login, and `api`, under /api/. Each reaches the app's one `Clinic` through `Depends(clinic_of)`; the
security policy in front of them all is edgederm/serve/guard.py."""
from __future__ import annotations

import csv
import io
import logging
import re
from datetime import date
from html import escape
from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from edgederm.errors import EdgeDermError
from edgederm.runtime.diagnose import RESULT_COLUMNS, result_fields
from edgederm.serve.access import COOKIE, SESSION_HOURS
from edgederm.serve.clinic import _SUFFIXES, Clinic, Upload
from edgederm.serve.store import StoreError, today

STATIC = files("edgederm.serve") / "static"
VISIT_ID_MAX = 64
NAME_MAX = 120
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
log = logging.getLogger("edgederm.serve")


async def clinic_of(request: Request) -> Clinic:
    """The dependency every route takes: the state `create_app` put on the app (async: no thread hop)."""
    return request.app.state.clinic


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
    note = f'<p class="error" role="alert">{escape(message)}</p>' if message else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>EdgeDerm: access code</title><link rel="stylesheet" href="/static/app.css"></head>
<body><main class="login"><h1>EdgeDerm</h1>
<form method="post" action="/login"><label for="code">Access code (printed when the app was first started)</label>
<input id="code" name="code" inputmode="numeric" autocomplete="off" required autofocus>
<button type="submit">Open</button></form>{note}</main></body></html>"""


pages = APIRouter()


@pages.get("/", response_class=FileResponse)
def page():
    return FileResponse(str(STATIC / "index.html"), media_type="text/html")


@pages.get("/login", response_class=HTMLResponse)
def login_page():
    return HTMLResponse(_login_page())


@pages.post("/login")
async def login(request: Request, clinic: Clinic = Depends(clinic_of)):
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


api = APIRouter(prefix="/api")


@api.get("/info")
def info(clinic: Clinic = Depends(clinic_of)):
    return clinic.info()


@api.post("/cases", status_code=201)
async def add_case(request: Request, clinic: Clinic = Depends(clinic_of)):
    visit_id, clinical, derm = await _read_case_form(request, clinic.max_upload_bytes)
    try:
        return await run_in_threadpool(clinic.diagnose, visit_id, clinical, derm)
    except StoreError as e:          # the device's fault (disk full, folder gone), not the photos'
        log.error("%s", e)
        raise HTTPException(503, f"the case could not be saved ({e}); nothing was stored") from None
    except EdgeDermError as e:       # a photo the model cannot take
        raise HTTPException(422, str(e)) from None


@api.get("/cases")
def cases(day: str | None = None, clinic: Clinic = Depends(clinic_of)):
    """{"day": the day listed (today unless asked), "cases": newest first}."""
    day = _day(day)
    return {"day": day, "cases": [c.to_dict() for c in clinic.store.on_day(day)]}


@api.get("/cases.csv")
def cases_csv(day: str | None = None, clinic: Clinic = Depends(clinic_of)):
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


@api.get("/cases/{case_id}")
def one_case(case_id: int, clinic: Clinic = Depends(clinic_of)):
    case = clinic.store.get(case_id)
    if case is None:
        raise HTTPException(404, f"no case {case_id}")
    return case.to_dict()


@api.get("/cases/{case_id}/photo/{which}")
def photo(case_id: int, which: str, clinic: Clinic = Depends(clinic_of)):
    if which not in ("clinical", "derm"):
        raise HTTPException(404, "photo must be clinical or derm")
    found = clinic.store.find_photo(case_id, which)
    if found is None:
        raise HTTPException(404, f"no {which} photo for case {case_id}")
    path, suffix = found
    media = next((t for _, s, t in _SUFFIXES if s == suffix), "application/octet-stream")
    return FileResponse(str(path), media_type=media)
