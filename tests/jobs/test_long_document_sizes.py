"""The long-document example is sized from the model's window: its job is accepted for a
small local model's window, not only for the hosted ones."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers.service import FakeUpstream, make_settings, start_service

ROOT = Path(__file__).resolve().parents[2]


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "make_long_document", ROOT / "examples" / "make_long_document.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("window", [2048, 4096, 8192])
async def test_the_job_for_a_small_window_is_accepted(
    tmp_path: Path, fake_upstream: FakeUpstream, window: int
) -> None:
    models = tmp_path / "models.yaml"
    models.write_text(f"models:\n  local: {{context_window: {window}}}\n")
    job = generator().make_job(min_chars=20_000, model="local", context_window=window)
    parts, summary = job["agents"]
    assert parts["map"]["chunk_tokens"] + parts["max_tokens"] < window
    assert summary["max_tokens"] < window
    async for svc in start_service(make_settings(tmp_path, models_file=str(models))):
        resp = await svc.client.post("/jobs", json=job)
        assert resp.status_code == 201, resp.text
        await svc.client.post(f"/jobs/{resp.json()['id']}/cancel")


def test_the_window_is_read_from_the_registry() -> None:
    module = generator()
    assert module.model_window("deepseek-v3.2") == 131_072
    assert module.model_window("kimi-k2.5") == 262_144
    assert module.model_window("no-such-model") == module.DEFAULT_WINDOW
    with pytest.raises(ValueError, match="too small"):
        module.sizes(600)
