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

    edgederm/serve/clinic.py   the app's state (`Clinic`: predictor, store, access code)
    edgederm/serve/routes.py   the routes, two APIRouters taking the clinic through Depends(clinic_of)
    edgederm/serve/guard.py    the security policy, a middleware in front of every route
"""
from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from edgederm.serve.clinic import TAKEN, Clinic, Upload, bundle_identity
from edgederm.serve.guard import LOOPBACK_NAMES, SECURITY_HEADERS, Guard
from edgederm.serve.routes import NAME_MAX, STATIC, VISIT_ID_MAX, api, pages

__all__ = ["create_app", "Clinic", "Upload", "bundle_identity", "TAKEN", "STATIC", "VISIT_ID_MAX", "NAME_MAX",
           "LOOPBACK_NAMES", "SECURITY_HEADERS"]


def create_app(clinic: Clinic) -> FastAPI:
    app = FastAPI(title="EdgeDerm clinic", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.clinic = clinic          # what the routes' Depends(clinic_of) hands them
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    app.add_middleware(Guard, clinic=clinic)
    app.include_router(pages)
    app.include_router(api)
    return app
