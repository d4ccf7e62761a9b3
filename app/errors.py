"""The service's error hierarchy: each error carries its HTTP status; one handler maps them."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import typing
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import iter_route_contexts
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.engine.problems import did_you_mean, json_kind, show
from app.engine.spec import AGENT_ID_PATTERN, JOB_ID_PATTERN

log = logging.getLogger(__name__)


class StartupRefused(RuntimeError):
    """Starting as configured would be wrong; the message says why and what to do (printed
    alone, without a traceback, and the process exits non-zero)."""


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


# Patterns of ids and cursors, said in words (a regex is no answer for someone using curl).
_PATTERN_WORDS = {
    AGENT_ID_PATTERN: "an agent id is 1 to 64 characters, each a letter (A-Z, a-z), a digit, "
    "'_', '.' or '-' (no spaces)",
    JOB_ID_PATTERN: "a cursor is the next_cursor of the previous page: a job id, 26 "
    "characters of digits and lower-case letters other than i, l, o and u",
}
_JSON_BODY = "the body must be JSON, sent with Content-Type: application/json"


def _is_json_media_type(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def _field_names(route: Any, loc: Sequence[Any]) -> list[str]:
    """The fields the body model accepts at ``loc`` (``("body", "agents", 0)`` → the agent's
    fields), or ``[]`` when the route or the place is not a model."""
    body_field = getattr(route, "body_field", None)
    annotation: Any = body_field.field_info.annotation if body_field is not None else None
    for part in loc[1:]:
        annotation = _type_at(annotation, part)
    model = _model_of(annotation)
    return list(model.model_fields) if model is not None else []


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The model in ``annotation`` (itself, or the X of ``X | None``)."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _type_at(annotation: Any, part: Any) -> Any:
    """The type at ``part`` of ``annotation``: a model's field by name, a list's item by
    index; None when there is no such place."""
    if isinstance(part, int):
        for candidate in (annotation, *typing.get_args(annotation)):
            if typing.get_origin(candidate) is list:
                return typing.get_args(candidate)[0]
        return None
    model = _model_of(annotation)
    field = model.model_fields.get(str(part)) if model is not None else None
    return field.annotation if field is not None else None


def _line_and_column(doc: Any, pos: Any) -> str:
    if not isinstance(doc, str) or not isinstance(pos, int):
        return ""
    line = doc.count("\n", 0, pos) + 1
    column = pos - (doc.rfind("\n", 0, pos) + 1) + 1
    return f" at line {line}, column {column}"


def _plain_errors(request: Request, exc: RequestValidationError) -> list[dict[str, Any]]:
    """The validation errors with the commonest client mistakes said plainly: a body that is
    not JSON (or not sent as JSON), JSON that does not parse, an unknown field, an id whose
    characters are not allowed."""
    content_type = request.headers.get("content-type")
    plain: list[dict[str, Any]] = []
    for err, safe in zip(exc.errors(), _safe_errors(exc.errors()), strict=True):
        loc = tuple(err.get("loc", ()))
        kind = err.get("type")
        ctx = err.get("ctx") or {}
        if kind == "json_invalid":
            where = _line_and_column(getattr(exc, "body", None), loc[-1] if loc else None)
            reason = str(ctx.get("error", "it does not parse"))
            safe["loc"] = ["body"]
            safe["msg"] = f"the body is not valid JSON: {reason}{where}"
        elif loc == ("body",) and kind in ("model_attributes_type", "dict_type", "missing"):
            if not _is_json_media_type(content_type):
                got = (
                    f"it was sent as {show(content_type, 60)}"
                    if content_type
                    else "no Content-Type was sent"
                )
                safe["msg"] = f"{_JSON_BODY} ({got})"
                safe["type"] = "content_type"
            elif kind == "missing":
                safe["msg"] = "the request has no body; send the job graph as a JSON object"
            else:
                safe["msg"] = f"the body must be a JSON object, not {json_kind(err.get('input'))}"
        elif kind == "extra_forbidden" and loc and isinstance(loc[-1], str):
            known = _field_names(request.scope.get("route"), loc[:-1])
            hint = did_you_mean(loc[-1], known)
            if not hint and known:
                hint = "; the fields here are " + ", ".join(known)
            safe["msg"] = f"unknown field {show(loc[-1], 60)}{hint}"
        elif kind == "string_pattern_mismatch" and ctx.get("pattern") in _PATTERN_WORDS:
            value = err.get("input")
            shown = show(value.encode("ascii", "backslashreplace").decode(), 60)
            safe["msg"] = f"{shown} is not allowed: {_PATTERN_WORDS[ctx['pattern']]}"
        plain.append(safe)
    return plain


def _path_methods(app: FastAPI, path: str) -> set[str]:
    """Every method some route serves at ``path`` (empty: no route has this path)."""
    scope = {"type": "http", "path": path, "root_path": "", "method": "GET"}
    methods: set[str] = set()
    for context in iter_route_contexts(app.routes):
        match, _ = context.route.matches(scope)
        if match is not Match.NONE:
            methods |= set(context.methods or ())
    if "GET" in methods:
        methods.add("HEAD")
    return methods


def _allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette names only the first
    route's methods when a path has several routes, e.g. GET and POST /jobs)."""
    return sorted(_path_methods(app, request.url.path))


class HttpEdges:
    """HTTP details the routes should not each handle: ``HEAD`` is answered as ``GET``
    without the body, and a path with a trailing slash is served as the path without it
    (instead of an empty 307, which curl does not follow for a POST)."""

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI) -> None:
        self.app = app
        self.fastapi_app = fastapi_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if (
            path != "/"
            and path.endswith("/")
            and not _path_methods(self.fastapi_app, path)
            and _path_methods(self.fastapi_app, path.rstrip("/") or "/")
        ):
            stripped = path.rstrip("/")
            scope = {**scope, "path": stripped, "raw_path": stripped.encode()}
        if scope["method"] == "HEAD":
            await self._head(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _head(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The GET answer's status and headers (Content-Length included), with no body. A
        # stream (SSE) is told the client left once the headers are out, so it ends.
        started = asyncio.Event()

        async def head_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                await send(message)
            elif message["type"] == "http.response.body" and not started.is_set():
                started.set()
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def head_receive() -> Message:
            if started.is_set():
                return {"type": "http.disconnect"}
            incoming = asyncio.ensure_future(receive())
            headers_out = asyncio.ensure_future(started.wait())
            await asyncio.wait({incoming, headers_out}, return_when=asyncio.FIRST_COMPLETED)
            headers_out.cancel()
            if incoming.done():
                return incoming.result()
            incoming.cancel()
            return {"type": "http.disconnect"}

        await self.app({**scope, "method": "GET"}, head_receive, head_send)


def install_handlers(app: FastAPI) -> None:
    app.add_middleware(HttpEdges, fastapi_app=app)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(app, request))
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> Response:
        # ASCII-escaped: a lone surrogate in a message must not break the encoding.
        body = json.dumps({"detail": _plain_errors(request, exc)}, ensure_ascii=True)
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
