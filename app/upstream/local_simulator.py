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
    def __init__(self, *, port: int, latency_ms: str, banner: bool = True) -> None:
        self.port = port
        self.latency_ms = latency_ms
        # The framed banner for a terminal; one log line instead when the log is JSON.
        self.banner = banner
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self._drainers: list[asyncio.Task[None]] = []

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
            # Whatever it says goes through our log (in its format), never straight out.
            stderr=asyncio.subprocess.PIPE,
            # Its own session: Ctrl-C in a terminal signals the whole foreground group, and
            # the simulator must outlive the service's drain (calls in flight finish); the
            # service stops it afterwards (and it exits by itself if the service dies).
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(30):
                while True:
                    line = (await self.proc.stdout.readline()).decode()
                    if not line:
                        assert self.proc.stderr is not None
                        said = (await self.proc.stderr.read()).decode(errors="replace")
                        raise RuntimeError(
                            "the built-in simulator exited before listening: " + said.strip()
                        )
                    match = _LISTENING.search(line)
                    if match:
                        self.url = match.group(1) + "/v1"
                        break
        except BaseException:
            await self.stop()
            raise
        # Keep reading its output so the child can never block on a full pipe.
        self._drainers = [
            asyncio.create_task(self._relay(self.proc.stdout), name="simulator-stdout"),
            asyncio.create_task(self._relay(self.proc.stderr), name="simulator-stderr"),
        ]
        if self.banner:
            print(BANNER.format(url=self.url), file=sys.stderr, flush=True)
            log.warning("using the built-in simulator at %s (no upstream configured)", self.url)
        else:
            log.warning(
                "NO UPSTREAM CONFIGURED: running against the built-in SIMULATOR at %s; answers "
                "are synthetic; set SWARM_UPSTREAM_BASE_URL (and SWARM_UPSTREAM_API_KEY) to "
                "call a real OpenAI-compatible API",
                self.url,
            )
        log.info("simulator process %d", self.proc.pid, extra={"simulator_pid": self.proc.pid})
        return self.url

    @staticmethod
    async def _relay(stream: asyncio.StreamReader | None) -> None:
        if stream is None:
            return
        with contextlib.suppress(Exception):
            while line := await stream.readline():
                text = line.decode(errors="replace").rstrip()
                if text:
                    log.warning("simulator: %s", text)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                async with asyncio.timeout(5):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        for drainer in self._drainers:
            drainer.cancel()
