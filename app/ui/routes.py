"""Serves the dashboard's bundle: index.html for the client-side routes, the hashed assets
with a long cache life. No API here: the page calls the service's own routes."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, Response

STATIC = Path(__file__).resolve().parent / "static"

# The page loads nothing from elsewhere (no CDN: it works offline); uPlot and the layout set
# inline styles.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'self'"
)
_PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# Vite names each asset by its content's hash, so a cached one never goes stale.
_ASSET_HEADERS = {
    "Cache-Control": "public, max-age=31536000, immutable",
    "X-Content-Type-Options": "nosniff",
}
# The client-side routes: the jobs list, one job, the upstream check.
_PAGES = re.compile(r"(|jobs/[^/]+|upstream)/?")
_ASSET = re.compile(r"assets/[A-Za-z0-9._-]+")

router = APIRouter(include_in_schema=False)


def _not_found(what: str) -> JSONResponse:
    return JSONResponse({"detail": what}, status_code=404)


def _index() -> Response:
    index = STATIC / "index.html"
    if not index.is_file():
        return JSONResponse(
            {"detail": "the dashboard is not built: run `make ui`"}, status_code=404
        )
    return FileResponse(index, media_type="text/html", headers=_PAGE_HEADERS)


@router.get("/ui")
async def dashboard() -> Response:
    return _index()


@router.get("/ui/{path:path}")
async def dashboard_path(path: str) -> Response:
    if _PAGES.fullmatch(path):
        return _index()
    if _ASSET.fullmatch(path):
        # The name admits no '/' nor '..' beyond the dots of a file name; the resolved path
        # must still lie inside the assets folder.
        assets = (STATIC / "assets").resolve()
        file = (assets / path.removeprefix("assets/")).resolve()
        if file.parent == assets and file.is_file():
            return FileResponse(file, headers=_ASSET_HEADERS)
    return _not_found(f"no dashboard page at /ui/{path}")
