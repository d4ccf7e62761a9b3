"""The service as `make run` and the container start it (`python -m app.server`): shutdown on
SIGTERM and Ctrl-C, slow and incomplete requests, oversized bodies from clients that send
before they read, the JSON log, and start-up refusals."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.helpers.processes import ROOT, Proc, free_port, start_simulator

pytestmark = pytest.mark.e2e


def start_server(
    tmp_path: Path, env: dict[str, str], *, new_session: bool = False, ready: bool = True
) -> Proc:
    """`python -m app.server` on a free loopback port, its output in a log file."""
    port = free_port()
    log_path = tmp_path / f"server-{port}.log"
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("SWARM_")}
    child_env.setdefault("SWARM_DATABASE_URL", f"sqlite:///{tmp_path / 'swarm.db'}")
    child_env.update(env)
    with log_path.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.server", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=child_env,
            # As a terminal runs `make run`: Ctrl-C signals this whole process group.
            start_new_session=new_session,
        )
    server = Proc(proc, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + 30
    while ready and time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        with contextlib.suppress(httpx2.TransportError):
            if httpx2.get(f"{server.url}/readyz", timeout=1).status_code == 200:
                return server
        time.sleep(0.1)
    if ready:
        proc.kill()
        proc.wait()
        raise RuntimeError("server did not become ready:\n" + log_path.read_text())
    return server


@pytest.fixture
def slow_simulator(tmp_path: Path) -> Iterator[Proc]:
    sim = start_simulator(tmp_path, "--latency-uniform-ms", "800,1200", "--seed", "5")
    yield sim
    sim.stop()


def sim_stats(url: str) -> dict[str, Any]:
    stats: dict[str, Any] = httpx2.get(f"{url}/_sim/stats", timeout=5).json()
    return stats


def wait_in_flight(client: httpx2.Client, sim_url: str, job_id: str, n: int) -> None:
    # An agent is `running` a moment before its call reaches the upstream: wait until the
    # simulator itself has the calls.
    deadline = time.monotonic() + 20
    while (
        client.get(f"/jobs/{job_id}").json()["counts"]["running"] < n
        or sim_stats(sim_url)["in_flight"] < n
    ):
        assert time.monotonic() < deadline, "the calls never got in flight"
        time.sleep(0.05)


def statuses(db: Path, job_id: str) -> dict[str, str]:
    return {agent: status for agent, (status, _, _) in agent_rows(db, job_id).items()}


def agent_rows(db: Path, job_id: str) -> dict[str, tuple[str, int, str | None]]:
    """Each agent's status, attempts and last error."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT agent_id, status, attempts, last_error FROM agents WHERE job_id = ?",
            (job_id,),
        ).fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def slow_job(n: int, concurrency: int) -> dict[str, Any]:
    return {
        "max_concurrency": concurrency,
        "agents": [{"id": f"a{i}", "task": f"slow item {i}"} for i in range(n)],
    }


@pytest.fixture
def connect() -> Iterator[Callable[[Proc], socket.socket]]:
    """Opens raw connections to a server; all are closed after the test."""
    opened: list[socket.socket] = []

    def open_one(server: Proc) -> socket.socket:
        host, port = server.url.removeprefix("http://").split(":")
        sock = socket.create_connection((host, int(port)), timeout=10)
        opened.append(sock)
        return sock

    yield open_one
    for sock in opened:
        sock.close()


def read_all(sock: socket.socket, timeout: float) -> bytes:
    """What the server sends until it closes the connection (or `timeout` passes)."""
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def assert_clean_log(text: str) -> None:
    for bad in (
        "Traceback",
        "Exception in ASGI application",
        "ASGI callable returned without completing response",
    ):
        assert bad not in text, text


# -- item 3: shutdown ---------------------------------------------------------------------


def test_sigterm_stops_new_calls_at_once_even_while_a_slow_client_holds_a_connection(
    tmp_path: Path, slow_simulator: Proc, connect: Callable[[Proc], socket.socket]
) -> None:
    server = start_server(
        tmp_path,
        {"SWARM_UPSTREAM_BASE_URL": slow_simulator.url + "/v1", "SWARM_SHUTDOWN_GRACE_S": "3"},
    )
    try:
        with httpx2.Client(base_url=server.url, timeout=10) as client:
            job_id = client.post("/jobs", json=slow_job(60, 10)).json()["id"]
            wait_in_flight(client, slow_simulator.url, job_id, 5)

        # A live event stream, read to its end in the background.
        stream: dict[str, Any] = {}

        def follow() -> None:
            try:
                with (
                    httpx2.Client(base_url=server.url, timeout=30) as c,
                    c.stream("GET", f"/jobs/{job_id}/events") as response,
                ):
                    for _ in response.iter_lines():
                        pass
                stream["ended"] = time.monotonic()
            except Exception as exc:
                stream["error"] = repr(exc)

        follower = threading.Thread(target=follow)
        follower.start()
        time.sleep(0.5)
        # A slow client: its request's headers are in, its body is still coming.
        slow = connect(server)
        slow.sendall(
            b"POST /jobs HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{"
        )
        time.sleep(0.3)

        before = sim_stats(slow_simulator.url)["requests"]
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(1.5)
        # Not one call started after the signal (one of slack for a call that began
        # between reading the counter and the signal).
        assert sim_stats(slow_simulator.url)["requests"] - before <= 1
        follower.join(timeout=10)
        # The stream ended at the signal, and cleanly (a complete chunked body).
        assert "error" not in stream, stream
        assert stream["ended"] - signalled < 1.5
        # The process exits though the slow client never finished: it was answered 503
        # when the grace period (3 s) ran out.
        server.proc.wait(timeout=15)
        stopped_after = time.monotonic() - signalled
        assert read_all(slow, 5).startswith(b"HTTP/1.1 503")
        assert stopped_after < 8
        assert sim_stats(slow_simulator.url)["requests"] - before <= 1
        assert server.proc.returncode in (0, -signal.SIGTERM)
        text = server.log()
        assert "shutting down: no new upstream call starts" in text
        assert_clean_log(text)
        # What was in flight finished; the rest waits in the database for the next start.
        mid = statuses(tmp_path / "swarm.db", job_id)
        assert "running" not in mid.values()
        assert list(mid.values()).count("completed") >= 5
    finally:
        server.stop()


def test_ctrl_c_leaves_the_built_in_simulator_to_finish_the_calls_in_flight(
    tmp_path: Path,
) -> None:
    # No upstream configured: the service starts its simulator, as `make run` does.
    server = start_server(tmp_path, {"SWARM_SIMULATOR_LATENCY_MS": "1500,2000"}, new_session=True)
    try:
        text = server.log()
        sim_url = re.search(r"SIMULATOR at (http://\S+)/v1", text)
        sim_pid = re.search(r"simulator process (\d+)", text)
        assert sim_url and sim_pid, text
        # Out of the terminal's reach: a session (and process group) of its own.
        assert os.getsid(int(sim_pid.group(1))) != os.getsid(server.proc.pid)
        with httpx2.Client(base_url=server.url, timeout=10) as client:
            job_id = client.post("/jobs", json=slow_job(20, 4)).json()["id"]
            wait_in_flight(client, sim_url.group(1), job_id, 4)
        # Ctrl-C in the terminal: SIGINT to the whole foreground process group.
        os.killpg(server.proc.pid, signal.SIGINT)
        server.proc.wait(timeout=20)
        assert_clean_log(server.log())
        # The simulator answered the four calls in flight before the service stopped it,
        # and no call was made (to fail, burning a retry) after the signal.
        rows = agent_rows(tmp_path / "swarm.db", job_id)
        done = [a for a, (status, _, _) in rows.items() if status == "completed"]
        assert len(done) >= 4, rows
        for status, attempts, error in rows.values():
            assert error is None, rows
            assert status == "completed" or (status == "pending" and attempts == 0), rows
        assert not Path(f"/proc/{sim_pid.group(1)}").exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.proc.pid, signal.SIGKILL)
        server.stop()


# -- item 6: a body over the limit, sent whole before the answer is read ---------------------


def test_an_oversized_body_gets_413_even_from_a_client_that_sends_it_all_first(
    tmp_path: Path, slow_simulator: Proc, connect: Callable[[Proc], socket.socket]
) -> None:
    server = start_server(
        tmp_path,
        {
            "SWARM_UPSTREAM_BASE_URL": slow_simulator.url + "/v1",
            "SWARM_MAX_REQUEST_BYTES": "1048576",
        },
    )
    try:
        # urllib sends `Connection: close` and the whole body before it reads a byte.
        for size in (2 * 1024 * 1024, 30 * 1024 * 1024):
            request = urllib.request.Request(
                f"{server.url}/jobs",
                data=b"{" + b" " * (size - 1),
                headers={"Content-Type": "application/json"},
            )
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(request, timeout=30)
            assert caught.value.code == 413
            assert "larger than the limit of 1,048,576 bytes" in caught.value.read().decode()
        # A client that asks first (Expect: 100-continue) gets the answer without sending.
        sock = connect(server)
        sock.sendall(
            b"POST /jobs HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: 30000000\r\nExpect: 100-continue\r\n\r\n"
        )
        assert read_all(sock, 5).startswith(b"HTTP/1.1 413")
    finally:
        server.stop()


# -- item 13: slow and incomplete requests ----------------------------------------------------


def test_trickling_clients_are_cut_off_and_healthz_answers_while_many_are_open(
    tmp_path: Path, slow_simulator: Proc, connect: Callable[[Proc], socket.socket]
) -> None:
    server = start_server(
        tmp_path,
        {
            "SWARM_UPSTREAM_BASE_URL": slow_simulator.url + "/v1",
            "SWARM_HTTP_HEADER_TIMEOUT_S": "2",
            "SWARM_HTTP_BODY_TIMEOUT_S": "2",
            "SWARM_HTTP_MAX_CONNECTIONS": "50",
        },
    )
    tricklers: list[socket.socket] = []
    try:
        # Headers that never end, and a body that never ends.
        headers = connect(server)
        headers.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        body = connect(server)
        body.sendall(
            b"POST /jobs HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{"
        )
        started = time.monotonic()
        for _ in range(3):
            time.sleep(0.4)
            headers.sendall(b"X-Slow: 1\r\n")
            body.sendall(b" ")
        answer = read_all(headers, 5)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b"headers did not arrive within 2 s" in answer
        answer = read_all(body, 5)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b"body did not arrive within 2 s" in answer
        assert time.monotonic() - started < 4.5

        # Four times the connection limit, all stuck in their headers: the oldest make room
        # for new ones, so the server holds no more than its limit and /healthz answers.
        for _ in range(200):
            sock = connect(server)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHo")
            tricklers.append(sock)
        with httpx2.Client(base_url=server.url, timeout=2) as client:
            for _ in range(5):
                assert client.get("/healthz").status_code == 200
        sockets = sum(
            1
            for fd in Path(f"/proc/{server.proc.pid}/fd").iterdir()
            if os.readlink(fd).startswith("socket:")
        )
        assert sockets < 50 + 20  # the connection limit, the database, the upstream pool
        closed = 0
        for sock in tricklers:
            sock.settimeout(0.01)
            with contextlib.suppress(TimeoutError):
                closed += sock.recv(100).startswith(b"HTTP/1.1 503")
        assert closed >= 140
    finally:
        server.stop()


# -- item 14: every line one JSON object ------------------------------------------------------


def test_with_log_format_json_every_line_the_service_prints_is_one_json_object(
    tmp_path: Path,
) -> None:
    # No upstream: the simulator's banner is printed too.
    server = start_server(tmp_path, {"SWARM_LOG_FORMAT": "json"})
    try:
        with httpx2.Client(base_url=server.url, timeout=10) as client:
            job_id = client.post("/jobs", json=slow_job(2, 2)).json()["id"]
            assert client.get(f"/jobs/{job_id}").status_code == 200
            assert client.get("/nope").status_code == 404
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(timeout=20)
        lines = server.log().splitlines()
        records = []
        for line in lines:
            record = json.loads(line)
            assert isinstance(record, dict), line
            records.append(record)
        loggers = {r["logger"] for r in records}
        # uvicorn's lines, its access log, alembic's and the service's own.
        assert {"uvicorn.error", "uvicorn.access", "alembic.runtime.migration", "app"} <= loggers
        assert any("SIMULATOR" in r["msg"] for r in records)
        assert any("Application shutdown complete" in r["msg"] for r in records)
        assert not any("\x1b[" in line for line in lines)  # no terminal colours
    finally:
        server.stop()


# -- item 15: start-up refusals ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "sentence"),
    [
        (
            {"SWARM_ENVIRONMENT": "production"},
            "SWARM_ENVIRONMENT=production but no upstream is configured",
        ),
        # Never bound: the refusal comes before the server listens (and a test touches
        # loopback only; the server is told to listen there all the same).
        ({"SWARM_HOST": "192.0.2.10"}, "no API keys exist and the service binds 192.0.2.10"),
    ],
    ids=["production-without-upstream", "non-loopback-without-keys"],
)
def test_a_refused_start_prints_its_sentence_alone_and_exits_non_zero(
    tmp_path: Path, env: dict[str, str], sentence: str
) -> None:
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("SWARM_")}
    child_env.update(SWARM_DATABASE_URL=f"sqlite:///{tmp_path / 'swarm.db'}", **env)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "app.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port()),
        ],
        cwd=ROOT,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert output.count(sentence) == 1, output
    assert "Traceback" not in output and 'File "' not in output, output
    # Nothing was started first: no simulator.
    assert "SIMULATOR at" not in output and "simulator process" not in output, output
