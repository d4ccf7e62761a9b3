"""The service's error hierarchy: each error carries its HTTP status; one handler maps them."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

log = logging.getLogger(__name__)


class ServiceError(Exception):
    status_code = 500

    def __init__(self, detail: Any, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers


class NotFoundError(ServiceError):
    status_code = 404


class ConflictError(ServiceError):
    status_code = 409


class UnprocessableError(ServiceError):
    status_code = 422


class TooManyRequestsError(ServiceError):
    status_code = 429

    def __init__(self, detail: str, *, retry_after_s: float) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))})


class ServiceUnavailableError(ServiceError):
    """The service cannot do this now, through no fault of the request: try again later."""

    status_code = 503

    def __init__(self, detail: str, *, retry_after_s: float) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))})


# How long a client is asked to wait before retrying a write the database refused (a full
# disk or a read-only database is fixed by an operator, not in milliseconds).
STORE_UNWRITABLE_RETRY_AFTER_S = 30


def store_unwritable(reason: str) -> ServiceUnavailableError:
    return ServiceUnavailableError(
        f"the database cannot be written: {reason}; nothing was stored",
        retry_after_s=STORE_UNWRITABLE_RETRY_AFTER_S,
    )


def _safe_errors(errors: Any) -> list[dict[str, Any]]:
    """Validation errors without the echoed input: it may be huge, or hold text (a lone
    surrogate) that cannot even be encoded in the response."""
    safe = []
    for err in errors:
        item = {
            "loc": list(err.get("loc", ())),
            "msg": str(err.get("msg", "")),
            "type": str(err.get("type", "")),
        }
        safe.append(item)
    return safe


def _allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette names only the first
    route's methods when a path has several routes, e.g. GET and POST /jobs)."""
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(app, request))
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_request: Request, exc: RequestValidationError) -> Response:
        # ASCII-escaped: a lone surrogate in a message must not break the encoding.
        body = json.dumps({"detail": _safe_errors(exc.errors())}, ensure_ascii=True)
        return Response(body, status_code=422, media_type="application/json")

    @app.exception_handler(ServiceError)
    async def _service_error(_request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse(
            {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
        )

    # The store's refusal, imported here: the error hierarchy itself needs no store.
    from app.store.writer import StoreUnwritableError

    @app.exception_handler(StoreUnwritableError)
    async def _store_unwritable(request: Request, exc: StoreUnwritableError) -> JSONResponse:
        # A route that wrote without translating the refusal: still a 503, never a 500.
        return await _service_error(request, store_unwritable(exc.reason))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Never a traceback or internals in a response; the log has the details.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error"}, status_code=500)
