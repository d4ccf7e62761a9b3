"""Serves the application under uvicorn with the service's connection limits.

`python -m app.server [uvicorn options]` is `uvicorn app.main:app` with the host and port
from settings, a bounded shutdown and `GuardedHttpProtocol`: a client gets
`SWARM_HTTP_HEADER_TIMEOUT_S` to send its headers and `SWARM_HTTP_BODY_TIMEOUT_S` its body,
and at most `SWARM_HTTP_MAX_CONNECTIONS` connections are open at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import resource
import sys
import weakref
from collections.abc import Sequence
from typing import Any

from starlette.types import Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from app.config import Settings, get_settings

log = logging.getLogger("app.server")

# Descriptors kept back from the connection limit: the database, the upstream pool (sized
# by SWARM_POOL_MAX_CONNECTIONS on top of this), log files, the simulator's pipes.
RESERVED_FDS = 64
# After SIGTERM, uvicorn itself cancels what is left this long after our own cut-off (the
# protocol closes lingering connections at the grace period; this is the backstop).
UVICORN_BACKSTOP_S = 2.0


def _response(status: int, reason: str, detail: str, *extra: tuple[str, str]) -> bytes:
    body = json.dumps({"detail": detail}).encode()
    head = [
        f"HTTP/1.1 {status} {reason}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
        *(f"{name}: {value}" for name, value in extra),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def connection_limit(settings: Settings) -> int:
    """SWARM_HTTP_MAX_CONNECTIONS, lowered to what the descriptor limit leaves room for."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return settings.http_max_connections
    room = soft - RESERVED_FDS - settings.pool_max_connections
    return max(1, min(settings.http_max_connections, room))


async def _too_many_connections(scope: Scope, receive: Receive, send: Send) -> None:
    body = json.dumps({"detail": "too many open connections; retry shortly"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", b"1"),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# Per server: its connections still sending their headers, oldest first (the ones that may
# be closed to make room for a new connection).
_waiting: weakref.WeakKeyDictionary[ServerState, dict[GuardedHttpProtocol, None]] = (
    weakref.WeakKeyDictionary()
)


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with time bounds on reading a request, a cap on open
    connections, and a bounded wait for open connections at shutdown."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        settings = get_settings()
        self.header_timeout_s = settings.http_header_timeout_s
        self.body_timeout_s = settings.http_body_timeout_s
        self.shutdown_grace_s = settings.shutdown_grace_s
        self.max_connections = connection_limit(settings)
        self._deadline: asyncio.TimerHandle | None = None
        self._phase = "headers"
        self._waiting = _waiting.setdefault(server_state, {})

    # -- deadlines ---------------------------------------------------------------------

    def _arm(self, seconds: float, phase: str) -> None:
        self._disarm()
        self._phase = phase
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or self.transport.get_protocol() is not self:
            return
        if self._phase == "shutdown":
            self._cut(503, "Service Unavailable", "the service is shutting down")
        else:
            what = "headers" if self._phase == "headers" else "body"
            limit = self.header_timeout_s if self._phase == "headers" else self.body_timeout_s
            self._cut(
                408,
                "Request Timeout",
                f"the request's {what} did not arrive within {limit:g} s",
            )

    def _cut(self, status: int, reason: str, detail: str) -> None:
        """Answer (unless a response is already under way) and close the connection; the
        application, if it is waiting for the body, sees the client disconnect."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        if cycle is None or not cycle.response_started:
            self.transport.write(_response(status, reason, detail))
        self.transport.close()

    # -- connection events -------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout_s, "headers")
        self._waiting[self] = None
        if len(self.connections) > self.max_connections:
            oldest = next((c for c in self._waiting if c is not self), None)
            if oldest is not None:
                oldest._cut(503, "Service Unavailable", "too many open connections")
            else:
                # Every other connection is in use: this one's request is refused.
                self.app = _too_many_connections

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._waiting.pop(self, None)
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._phase != "headers" or self._deadline is None:
            # A further request on a kept-alive connection: its headers get their own time.
            self._arm(self.header_timeout_s, "headers")
            self._waiting[self] = None

    def on_headers_complete(self) -> None:
        self._waiting.pop(self, None)
        if self._phase != "shutdown":
            self._arm(self.body_timeout_s, "body")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        if self._phase != "shutdown":
            self._disarm()
            self._phase = "done"
        super().on_message_complete()

    def shutdown(self) -> None:
        super().shutdown()
        if self.transport.is_closing():
            return
        # A request still being read or answered gets the grace period, then is cut (a
        # body's own deadline, if sooner, still holds).
        if self._deadline is None or self._deadline.when() > self.loop.time() + (
            self.shutdown_grace_s
        ):
            self._arm(self.shutdown_grace_s, "shutdown")


def _raise_descriptor_limit() -> None:
    """Use the hard limit on open files: each connection holds one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def uvicorn_args(argv: Sequence[str], settings: Settings) -> list[str]:
    """uvicorn's command line: ours first, so that options given by the caller win."""
    return [
        "app.main:app",
        "--host",
        settings.host,
        "--port",
        str(settings.port),
        "--http",
        "app.server:GuardedHttpProtocol",
        "--timeout-graceful-shutdown",
        str(round(settings.shutdown_grace_s + UVICORN_BACKSTOP_S)),
        *argv,
    ]


def main(argv: Sequence[str] | None = None) -> None:
    from uvicorn.main import main as uvicorn_main

    args = list(sys.argv[1:] if argv is None else argv)
    # The application checks the address it binds (no API keys: loopback only), so a
    # --host given here is its SWARM_HOST too, and --port its SWARM_PORT.
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--host")
    parser.add_argument("--port")
    known, _ = parser.parse_known_args(args)
    if known.host:
        os.environ["SWARM_HOST"] = known.host
    if known.port:
        os.environ["SWARM_PORT"] = known.port
    get_settings.cache_clear()
    settings = get_settings()
    _raise_descriptor_limit()
    uvicorn_main.main(args=uvicorn_args(args, settings), prog_name="python -m app.server")


if __name__ == "__main__":
    main()
