"""The clinic app's security policy (edgederm/serve/app.py), one middleware in front of every route:

  - listening on a loopback address, only loopback host names are served (DNS rebinding: a web page whose
    name resolves to 127.0.0.1 would otherwise read the cases): 421;
  - a request that changes something (not GET / HEAD) must come from the page itself: 403 otherwise;
  - with an access code (listening beyond this machine, edgederm/serve/access.py), every path but
    /static/ and /login needs a session: 401 under /api/, a redirect to /login elsewhere;
  - an exception is a one-line 500, the traceback goes to the server's log only;
  - every response carries SECURITY_HEADERS.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from fastapi import Request
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.responses import Response
from starlette.types import ASGIApp

from edgederm.serve.access import COOKIE, is_loopback

if TYPE_CHECKING:
    from edgederm.serve.clinic import Clinic

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
log = logging.getLogger("edgederm.serve")


class Guard(BaseHTTPMiddleware):
    """`app.add_middleware(Guard, clinic=clinic)`: what `@app.middleware("http")` would build from a function."""

    def __init__(self, app: ASGIApp, clinic: Clinic):
        super().__init__(app)
        self.clinic = clinic
        self.local = is_loopback(clinic.host)

    def refusal(self, request: Request) -> Response | None:
        """Why this request may not proceed, as a response; None when it may."""
        hostname = (request.url.hostname or "").strip("[]")
        if self.local and hostname not in LOOPBACK_NAMES:
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
        access = self.clinic.access
        if access is not None and not open_paths and not access.valid_session(request.cookies.get(COOKIE)):
            return (JSONResponse({"detail": "access code needed: open the page and enter it"}, 401)
                    if request.url.path.startswith("/api/") else RedirectResponse("/login", 303))
        return None

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        try:
            response = self.refusal(request) or await call_next(request)
        except Exception:        # never a traceback to the browser; the server log has it
            log.exception("request failed: %s %s", request.method, request.url.path)
            response = JSONResponse({"detail": "internal error: see the server's log"}, 500)
        response.headers.update(SECURITY_HEADERS)
        return response
