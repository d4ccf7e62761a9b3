"""A second, independent OpenAI-compatible upstream for the makespan benchmark, written on
the standard library alone (``http.server.ThreadingHTTPServer``) and sharing no code with the
project's simulator, so a result is not an artefact of one fake upstream.

- ``POST /v1/chat/completions``: a non-streaming chat completion with ``usage`` filled; it
  sleeps a latency drawn uniformly from ``--latency-uniform-ms LO,HI`` with ``--seed``.
- ``--max-concurrency N``: a request arriving while N are in flight is answered 429 with a
  ``retry-after`` header at once (it is logged, with its status, and takes no latency).
- ``GET /requests``: the request log, one entry per request: ``start`` and ``end`` (seconds,
  ``time.monotonic`` of this process), ``ts`` (its arrival, epoch seconds), ``latency_ms``,
  ``status``, ``messages`` (so the bench finds the agent the same way as with the simulator)
  and the ``x-agent-id`` header if sent.
- ``GET /stats``: ``requests``, ``by_status``, ``peak_in_flight`` and ``latencies_ms``
  (``mean``, ``max``) of the answered requests since the last reseed.
- ``POST /reseed`` with ``{"seed": N}``: restart the latency draws, clear the log and the
  counters; what the benchmark calls before each strategy so all meet the same draws.
- ``GET /healthz``.
- ``--exit-with-parent``: exit once the process that started it is gone, so a benchmark
  that dies leaves no server behind.

The standard library was chosen on purpose (rather than another web framework) so this
upstream has nothing in common with the service's stack. It prints ``listening on URL`` once
it has bound its port (``--port 0`` picks a free one on loopback).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class State:
    def __init__(self, lo_ms: float, hi_ms: float, seed: int, max_concurrency: int) -> None:
        self.lo_ms, self.hi_ms = lo_ms, hi_ms
        self.max_concurrency = max_concurrency
        self.lock = threading.Lock()
        self.rng = random.Random(seed)
        self.in_flight = 0
        self.peak_in_flight = 0
        self.log: list[dict[str, Any]] = []
        self.counter = 0

    def reseed(self, seed: int) -> None:
        with self.lock:
            self.rng = random.Random(seed)
            self.log = []
            self.peak_in_flight = self.in_flight

    def stats(self) -> dict[str, Any]:
        with self.lock:
            entries = list(self.log)
            peak = self.peak_in_flight
        by_status: dict[str, int] = {}
        for e in entries:
            by_status[str(e["status"])] = by_status.get(str(e["status"]), 0) + 1
        answered = [e["latency_ms"] for e in entries if e["status"] == 200]
        return {
            "requests": len(entries),
            "by_status": by_status,
            "peak_in_flight": peak,
            "latencies_ms": {
                "mean": round(sum(answered) / len(answered), 3) if answered else None,
                "max": round(max(answered), 3) if answered else None,
            },
        }

    def admit(self) -> float | None:
        """The latency in seconds of an admitted request, or None when it is over the cap."""
        with self.lock:
            if self.max_concurrency > 0 and self.in_flight >= self.max_concurrency:
                return None
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            self.counter += 1
            return self.rng.uniform(self.lo_ms, self.hi_ms) / 1000.0

    def release(self, entry: dict[str, Any], admitted: bool) -> None:
        with self.lock:
            if admitted:
                self.in_flight -= 1
            self.log.append(entry)


def _words(messages: Any) -> int:
    if not isinstance(messages, list):
        return 0
    total = 0
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            total += len(content.split())
    return total


class Handler(BaseHTTPRequestHandler):
    server_version = "stdlib-upstream/1"
    protocol_version = "HTTP/1.1"
    state: State  # set on the class by make_server

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            return None

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, {"ok": True})
        elif self.path == "/requests":
            with self.state.lock:
                entries = list(self.state.log)
            self._send(200, {"requests": entries})
        elif self.path == "/stats":
            self._send(200, self.state.stats())
        else:
            self._send(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        body = self._body()
        if self.path == "/reseed":
            seed = body.get("seed", 0) if isinstance(body, dict) else 0
            self.state.reseed(int(seed))
            self._send(200, {"ok": True})
            return
        if self.path != "/v1/chat/completions":
            self._send(404, {"error": {"message": "not found"}})
            return
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            self._send(400, {"error": {"message": "messages must be a list", "type": "invalid"}})
            return
        start = time.monotonic()
        latency = self.state.admit()
        entry: dict[str, Any] = {
            "start": start,
            "ts": time.time(),
            "messages": body["messages"],
            "agent": self.headers.get("x-agent-id"),
        }
        if latency is None:
            entry.update(end=time.monotonic(), latency_ms=0.0, status=429)
            self.state.release(entry, admitted=False)
            self._send(
                429,
                {"error": {"message": "too many requests", "type": "rate_limit_error"}},
                {"retry-after": "1"},
            )
            return
        try:
            time.sleep(latency)
        finally:
            end = time.monotonic()
            entry.update(end=end, latency_ms=(end - start) * 1000.0, status=200)
            self.state.release(entry, admitted=True)
        prompt_tokens = _words(body["messages"])
        completion = "ok: done"
        self._send(
            200,
            {
                "id": f"chatcmpl-{self.state.counter}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": str(body.get("model") or "stdlib"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": completion},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": 2,
                    "total_tokens": prompt_tokens + 2,
                },
            },
        )


class Server(ThreadingHTTPServer):
    daemon_threads = True
    # The listen backlog, read when the constructor binds (so set on the class): a client
    # opening 200 connections at once overflows the default of 5, and the dropped SYNs are
    # retried after 1 s, 3 s, 7 s, ...: time in the client's makespan with no upstream busy.
    request_queue_size = 1024


def make_server(
    port: int, lo_ms: float, hi_ms: float, seed: int, max_concurrency: int
) -> ThreadingHTTPServer:
    handler = type(
        "BoundHandler", (Handler,), {"state": State(lo_ms, hi_ms, seed, max_concurrency)}
    )
    return Server(("127.0.0.1", port), handler)


def _watch_parent(server: ThreadingHTTPServer) -> None:
    """Stop serving once this process has been re-parented (its parent died)."""
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(1.0)
    server.shutdown()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--latency-uniform-ms", default="500,1500")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-concurrency", type=int, default=0, help="0: no cap")
    p.add_argument("--exit-with-parent", action="store_true")
    a = p.parse_args(argv)
    lo, hi = (float(x) for x in a.latency_uniform_ms.split(","))
    server = make_server(a.port, lo, hi, a.seed, a.max_concurrency)
    if a.exit_with_parent:
        threading.Thread(target=_watch_parent, args=(server,), daemon=True).start()
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        sys.stdout.flush()


if __name__ == "__main__":
    main()
