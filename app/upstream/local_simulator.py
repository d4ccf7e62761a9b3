"""Starts the built-in simulator as a child process when no upstream is configured
(development only), and says so loudly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys

log = logging.getLogger(__name__)

_LISTENING = re.compile(r"simulator listening on (http://\S+)")

BANNER = """
==============================================================================
  NO UPSTREAM CONFIGURED: running against the built-in SIMULATOR at {url}
  Answers are synthetic. Set SWARM_UPSTREAM_BASE_URL (and SWARM_UPSTREAM_API_KEY)
  to call a real OpenAI-compatible API.
==============================================================================
"""


class LocalSimulator:
    def __init__(self, *, port: int, latency_ms: str) -> None:
        self.port = port
        self.latency_ms = latency_ms
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self._drainer: asyncio.Task[None] | None = None

    async def start(self) -> str:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "app.simulator",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--latency-uniform-ms",
            self.latency_ms,
            "--exit-with-parent",
            stdout=asyncio.subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(30):
                while True:
                    line = (await self.proc.stdout.readline()).decode()
                    if not line:
                        raise RuntimeError("the built-in simulator exited before listening")
                    match = _LISTENING.search(line)
                    if match:
                        self.url = match.group(1) + "/v1"
                        break
        except BaseException:
            await self.stop()
            raise
        # Keep draining its stdout so the child can never block on a full pipe.
        self._drainer = asyncio.create_task(self._drain(), name="simulator-stdout")
        print(BANNER.format(url=self.url), file=sys.stderr, flush=True)
        log.warning("using the built-in simulator at %s (no upstream configured)", self.url)
        return self.url

    async def _drain(self) -> None:
        if self.proc is None or self.proc.stdout is None:
            return
        with contextlib.suppress(Exception):
            while await self.proc.stdout.readline():
                pass

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.terminate()
        try:
            async with asyncio.timeout(5):
                await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
