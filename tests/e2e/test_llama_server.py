"""Against a real llama.cpp server, when one is installed: `llama-server` on PATH and a
small GGUF model named by SWARM_TEST_LLAMA_MODEL (e.g. Gemma 3 270M). Skipped, saying why,
otherwise; CI does not build llama.cpp."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.helpers.e2e import agent
from tests.helpers.processes import free_port, start_service, wait_job

pytestmark = pytest.mark.e2e

SLOTS = 2
CONTEXT = 4096  # shared by the slots: 2,048 tokens each


@pytest.fixture
def llama_server(tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("llama-server")
    model = os.environ.get("SWARM_TEST_LLAMA_MODEL")
    if binary is None:
        pytest.skip("llama-server is not on PATH")
    if not model or not Path(model).is_file():
        pytest.skip("SWARM_TEST_LLAMA_MODEL does not name a GGUF model file")
    port = free_port()
    log = (tmp_path / "llama.log").open("w")
    # Slots, the context they share, and the model's own chat template: the flags that matter.
    command = [binary, "-m", model, "--host", "127.0.0.1", "--port", str(port)]
    command += ["--alias", "local", "-np", str(SLOTS), "-c", str(CONTEXT), "--jinja"]
    proc = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx2.TransportError):
                if httpx2.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None:
                pytest.fail("llama-server exited:\n" + (tmp_path / "llama.log").read_text())
            time.sleep(0.5)
        else:
            pytest.fail("llama-server did not become healthy in 120 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_a_job_against_llama_server(tmp_path: Path, llama_server: str) -> None:
    models = tmp_path / "models.yaml"
    models.write_text(
        "providers:\n"
        f"  llama: {{base_url: '{llama_server}/v1', api_key_env: null}}\n"
        "models:\n"
        f"  local: {{provider: llama, context_window: {CONTEXT // SLOTS}, "
        "input_usd_per_mtok: 0, output_usd_per_mtok: 0}\n"
        "  unsized: {provider: llama, upstream_name: local}\n"
    )
    env = {
        "SWARM_MODELS_FILE": str(models),
        "SWARM_DEFAULT_MODEL": "local",
        "SWARM_UPSTREAM_STREAM": "true",
        "SWARM_DELAY_LIMIT": "true",
    }
    svc = start_service(tmp_path, env)
    try:
        with httpx2.Client(base_url=svc.url, timeout=30) as client:
            body = {
                "agents": [
                    {"id": f"a{i}", "task": f"Name one colour ({i}).", "max_tokens": 32}
                    for i in range(4)
                ]
                + [{"id": "too_long", "model": "unsized", "task": "Read: " + "word " * 6000}]
            }
            resp = client.post("/jobs", json=body)
            assert resp.status_code == 201, resp.text
            done = wait_job(client, resp.json()["id"], timeout=600)
            assert done["counts"]["completed"] == 4, done
            assert done["cost_usd"] == 0
            a0 = agent(client, done["id"], "a0")
            assert a0["usage"]["completion_tokens"] <= 32 and a0["first_token_ms"] is not None
            too_long = agent(client, done["id"], "too_long")
            assert too_long["status"] == "failed" and too_long["attempts"] == 1
            assert (
                f"over the upstream's limit of {CONTEXT // SLOTS:,} tokens"
                in (too_long["last_error"])
            )
    finally:
        svc.stop()
