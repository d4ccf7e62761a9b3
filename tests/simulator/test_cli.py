"""``python -m app.simulator`` as a real process, and the flag -> config mapping."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import openai
import pytest

from app.simulator.__main__ import build_parser, parse_config
from app.simulator.config import SimulatorConfig
from app.simulator.content import prompt_tag

REPO_ROOT = Path(__file__).resolve().parents[2]
LISTENING = "simulator listening on http://"


async def test_module_runs_as_a_process_on_a_free_port() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.simulator",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--latency-base-ms",
        "0",
        "--api-key",
        "sk-cli",
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip()
        assert line.startswith(LISTENING), line
        url = line.removeprefix("simulator listening on ")
        port = int(url.rsplit(":", 1)[1])
        assert port > 0
        assert url == f"http://127.0.0.1:{port}"

        messages = [{"role": "user", "content": "hello from a subprocess"}]
        async with openai.AsyncOpenAI(
            base_url=f"{url}/v1", api_key="sk-cli", max_retries=0, timeout=10
        ) as client:
            result = await client.chat.completions.create(model="m", messages=messages)
        assert result.choices[0].message.content.startswith(prompt_tag(messages) + ": ")
    finally:
        proc.terminate()
        code = await asyncio.wait_for(proc.wait(), 10)
    assert code == 0  # SIGTERM is a clean shutdown
    assert proc.stdout is not None
    assert b"sk-cli" not in await proc.stdout.read()


def _gone(pid: int) -> bool:
    """Exited (reaped, or a zombie nobody reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


async def test_exit_with_parent_stops_an_orphan() -> None:
    # The middle process starts the simulator, waits until it listens, then exits.
    launcher = (
        "import subprocess, sys\n"
        "p = subprocess.Popen([sys.executable, '-m', 'app.simulator', '--port', '0',"
        " '--exit-with-parent'], stdout=subprocess.PIPE, text=True)\n"
        "print(p.pid, p.stdout.readline().strip(), flush=True)\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", launcher, cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    pid_text, listening = out.decode().split(" ", 1)
    assert listening.startswith(LISTENING)
    pid = int(pid_text)
    # Polling is the only way to watch a process that is not our child; it polls every 1 s.
    for _ in range(100):
        if _gone(pid):
            break
        await asyncio.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the orphaned simulator kept running")


def test_flags_map_to_config_fields() -> None:
    config = parse_config(
        [
            "--port=0",
            "--seed=5",
            "--latency-uniform-ms=5,10",
            "--latency-per-token-ms=0.5",
            "--output-tokens=3,4",
            "--models=a, b",
            "--api-key=sk-secret",
            "--concurrency-cap=3",
            "--rpm-cap=60",
            "--error-rate=0.25",
            "--request-log-size=7",
            "--exit-with-parent",
        ]
    )
    assert config.port == 0 and config.seed == 5
    assert config.latency_uniform_ms == (5.0, 10.0)
    assert config.latency_per_token_ms == 0.5
    assert config.output_tokens == (3, 4)
    assert config.models == ("a", "b")
    assert config.api_key is not None and config.api_key.get_secret_value() == "sk-secret"
    assert "sk-secret" not in repr(config) and "sk-secret" not in str(config.public_dict())
    assert config.concurrency_cap == 3 and config.rpm_cap == 60
    assert config.error_rate == 0.25 and config.request_log_size == 7
    assert config.exit_with_parent is True
    assert parse_config([]) == SimulatorConfig()


def test_every_field_has_a_flag() -> None:
    flags = {a.dest for a in build_parser()._actions if a.option_strings and a.dest != "help"}
    assert flags == set(SimulatorConfig.model_fields)


def test_bad_flag_values_exit_without_echoing_the_key(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_config(["--api-key=sk-hidden", "--error-rate=3"])
    err = capsys.readouterr().err
    assert "--error-rate" in err
    assert "sk-hidden" not in err
    with pytest.raises(SystemExit):
        parse_config(["--output-tokens=7"])


def test_api_key_can_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIMULATOR_API_KEY", "sk-env")
    config = parse_config([])
    assert config.api_key is not None and config.api_key.get_secret_value() == "sk-env"
