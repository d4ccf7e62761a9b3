"""The processes a benchmark drives: the simulator, the standard-library upstream and the
service as subprocesses on free loopback ports, plus what /proc says about them (CPU time,
peak RSS)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

REPO_ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # loopback only
START_TIMEOUT_S = 60.0
_CLK_TCK = os.sysconf("SC_CLK_TCK")
# What the simulator prints once it serves (its only line on stdout).
SIMULATOR_LISTENING = re.compile(r"simulator listening on (http://\S+)")
# What bench/stdlib_upstream.py prints once it has bound its port.
STDLIB_LISTENING = re.compile(r"^listening on (http://\S+)")


def simulator_command(*args: str) -> list[str]:
    """The one way to run the simulator as a subprocess (benchmarks and tests): loopback, a
    free port, and "simulator listening on URL" printed once it serves."""
    return [sys.executable, "-m", "app.simulator", "--host", HOST, "--port", "0", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def status_kb(pid: int, key: str) -> int:
    """A ``kB`` line of /proc/PID/status: VmHWM (peak RSS), VmRSS, ..."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def parse_ts(value: str) -> float:
    """An ISO timestamp from the service (UTC) as epoch seconds."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARM_")}
    env.update(extra)
    return env


@dataclass
class Simulator:
    proc: asyncio.subprocess.Process
    url: str
    http: aiohttp.ClientSession
    args: tuple[str, ...]

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def control(self, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(method, self.url + path, json=body) as resp:
            resp.raise_for_status()
            return await resp.json()

    async def reset(self) -> None:
        await self.control("POST", "/_sim/reset")

    async def configure(self, **patch: Any) -> None:
        await self.control("POST", "/_sim/config", patch)

    async def reseed(self, seed: int) -> None:
        """Restart the RNG at ``seed`` (the simulator only reseeds when the seed changes) and
        clear the counters and the request log."""
        await self.configure(seed=seed + 1)
        await self.configure(seed=seed)
        await self.reset()

    async def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = await self.control("GET", "/_sim/stats")
        return stats

    async def requests(self, after: int = 0) -> list[dict[str, Any]]:
        """Every logged request with seq > ``after`` (pages of 1,000)."""
        out: list[dict[str, Any]] = []
        while True:
            page = await self.control("GET", f"/_sim/requests?after={after}&limit=1000")
            out.extend(page["data"])
            if not page["data"]:
                return out
            after = page["next_after"]

    async def stop(self) -> None:
        await _stop(self.proc)


@dataclass
class StdlibUpstream:
    """bench/stdlib_upstream.py as a subprocess, with the part of ``Simulator``'s interface
    the makespan scenario uses (``reseed``, ``stats``, ``requests``, ``stop``): a run reads the
    same figures from either upstream. Its control endpoints are its own, not ``/_sim/``."""

    proc: asyncio.subprocess.Process
    url: str
    http: aiohttp.ClientSession
    args: tuple[str, ...]

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(method, self.url + path, json=body) as resp:
            resp.raise_for_status()
            return await resp.json()

    async def reseed(self, seed: int) -> None:
        """Restart the latency draws at ``seed``; clears the request log and the counters."""
        await self._call("POST", "/reseed", {"seed": seed})

    async def stats(self) -> dict[str, Any]:
        """The simulator's ``/_sim/stats`` keys that ``sim_summary`` reads."""
        stats: dict[str, Any] = await self._call("GET", "/stats")
        return stats

    async def requests(self) -> list[dict[str, Any]]:
        """Every request since the last reseed (``messages``, ``latency_ms``, ``ts``, ...)."""
        entries: list[dict[str, Any]] = (await self._call("GET", "/requests"))["requests"]
        return entries

    async def stop(self) -> None:
        await _stop(self.proc)


async def start_stdlib_upstream(http: aiohttp.ClientSession, *args: str) -> StdlibUpstream:
    """Start bench/stdlib_upstream.py on a free loopback port (it exits with this process)
    and wait for its "listening on URL" line."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.stdlib_upstream",
        "--port",
        "0",
        "--exit-with-parent",
        *args,
        cwd=REPO_ROOT,
        env=child_env(),
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)).decode()
    except BaseException:
        await _stop(proc)
        raise
    match = STDLIB_LISTENING.search(line)
    if match is None:
        await _stop(proc)
        raise RuntimeError(f"unexpected stdlib upstream output: {line!r}")
    return StdlibUpstream(proc, match.group(1), http, tuple(args))


async def spawn_simulator(
    *args: str, timeout_s: float = START_TIMEOUT_S
) -> tuple[asyncio.subprocess.Process, str]:
    """Start the simulator (it exits with this process) and wait until it serves: the
    process, and its base URL."""
    proc = await asyncio.create_subprocess_exec(
        *simulator_command("--exit-with-parent", *args),
        cwd=REPO_ROOT,
        env=child_env(),
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout_s)).decode()
    except BaseException:
        await _stop(proc)
        raise
    match = SIMULATOR_LISTENING.search(line)
    if match is None:
        await _stop(proc)
        raise RuntimeError(f"unexpected simulator output: {line!r}")
    return proc, match.group(1)


async def start_simulator(http: aiohttp.ClientSession, *args: str) -> Simulator:
    proc, url = await spawn_simulator(*args)
    return Simulator(proc, url, http, tuple(args))


@dataclass
class Service:
    proc: asyncio.subprocess.Process
    url: str
    http: aiohttp.ClientSession
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    profiler: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_s(self) -> float:
        return cpu_seconds(self.pid)

    def peak_rss_mb(self) -> float:
        return status_kb(self.pid, "VmHWM") / 1024

    def rss_mb(self) -> float:
        return status_kb(self.pid, "VmRSS") / 1024

    async def submit(self, body: bytes) -> dict[str, Any]:
        async with self.http.post(
            self.url + "/jobs", data=body, headers={"Content-Type": "application/json"}
        ) as resp:
            job: dict[str, Any] = await resp.json()
            if resp.status != 201:
                raise RuntimeError(f"submit refused: {resp.status} {str(job)[:500]}")
            return job

    async def job(self, job_id: str, *, agents: bool = False) -> dict[str, Any]:
        query = "" if agents else "?agents=false"
        async with self.http.get(f"{self.url}/jobs/{job_id}{query}") as resp:
            resp.raise_for_status()
            job: dict[str, Any] = await resp.json()
            return job

    async def wait(self, job_id: str, *, timeout_s: float, poll_s: float = 0.1) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job = await self.job(job_id)
            if job["status"] in ("completed", "failed", "cancelled"):
                return job
            await asyncio.sleep(poll_s)
        raise TimeoutError(f"job {job_id} did not finish within {timeout_s:.0f}s")

    async def metrics_text(self) -> str:
        async with self.http.get(self.url + "/metrics") as resp:
            return await resp.text()

    async def stop(self) -> None:
        if self.profiler is not None and self.profiler.returncode is None:
            self.profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.profiler.wait(), 30)
        await _stop(self.proc)
        if self.profiler is not None:
            await _stop(self.profiler)

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


async def start_service(
    http: aiohttp.ClientSession,
    workdir: Path,
    upstream_url: str,
    *,
    profile: Path | None = None,
    **env: str,
) -> Service:
    """The service on a free port over a fresh SQLite file. With ``profile``, ``py-spy
    record`` samples it (100 Hz, collapsed stacks, GIL and idle excluded) until it stops."""
    port = free_port()
    log_path = workdir / f"service-{port}.log"
    db = workdir / f"swarm-{port}.db"
    values = {
        "SWARM_DATABASE_URL": f"sqlite:///{db}",
        "SWARM_UPSTREAM_BASE_URL": upstream_url + "/v1",
        **env,
    }
    with log_path.open("w") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "uvicorn",
            "app.main:app",
            "--host",
            HOST,
            "--port",
            str(port),
            "--log-level",
            "warning",
            cwd=REPO_ROOT,
            env=child_env(**values),
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
    service = Service(proc, f"http://{HOST}:{port}", http, log_path, values)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            break
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(service.url + "/readyz") as resp:
                if resp.status == 200:
                    if profile is not None:
                        service.profiler = await _start_profiler(proc.pid, profile)
                    return service
        await asyncio.sleep(0.1)
    await _stop(proc)
    raise RuntimeError("service did not become ready:\n" + service.log_tail())


async def _start_profiler(pid: int, out: Path) -> asyncio.subprocess.Process:
    spy = Path(sys.executable).with_name("py-spy")
    return await asyncio.create_subprocess_exec(
        str(spy) if spy.exists() else "py-spy",
        "record",
        "--pid",
        str(pid),
        "--rate",
        "100",
        "--format",
        "raw",
        "--nonblocking",
        "--output",
        str(out),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
