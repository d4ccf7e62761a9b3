"""ASGI middleware that refuses request bodies over the configured size with 413 (and paths
holding a NUL, which name nothing, with 404)."""

from __future__ import annotations

import asyncio
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# A refused body is read and thrown away before the 413 is sent, up to this much and this
# long: a client that sends its whole body before reading (Python's urllib, many scripts)
# would otherwise get a connection reset, not the answer. Past these, the 413 goes out
# and the connection is closed.
DISCARD_MAX_BYTES = 256 * 1024 * 1024
DISCARD_MAX_S = 30.0


async def _answer(send: Send, status: int, payload: dict[str, str]) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, send: Send, *, close: bool = False) -> None:
        body = json.dumps(
            {"detail": f"request body is larger than the limit of {self.max_bytes:,} bytes"}
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    async def _discard(receive: Receive, declared: int | None, read: int) -> bool:
        """Read the rest of a refused body and drop it; whether all of it was read."""
        if declared is not None and declared > DISCARD_MAX_BYTES:
            return False
        try:
            async with asyncio.timeout(DISCARD_MAX_S):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return False
                    read += len(message.get("body", b""))
                    if read > DISCARD_MAX_BYTES:
                        return False
                    if not message.get("more_body", False):
                        return True
        except TimeoutError:
            return False

    async def _refuse_body(
        self, scope: Scope, receive: Receive, send: Send, declared: int | None, read: int
    ) -> None:
        if (b"expect", b"100-continue") in [(k, v.lower()) for k, v in scope["headers"]]:
            # The client waits for a go-ahead before sending the body: it gets the answer
            # instead, and sends nothing.
            await self._refuse(send, close=True)
            return
        complete = await self._discard(receive, declared, read)
        await self._refuse(send, close=not complete)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "\x00" in scope.get("path", ""):
            # No id holds a NUL (and no database could look one up): nothing is there.
            await _answer(send, 404, {"detail": "not found"})
            return
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    await self._refuse_body(scope, receive, send, declared, 0)
                    return
        # Read the body within the limit (chunked uploads have no Content-Length), then
        # hand it on in one piece.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                if message.get("more_body", False):
                    await self._refuse_body(scope, receive, send, None, size)
                else:
                    await self._refuse(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
