"""The simulator's models and context windows are the registry's, model by model."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from app.simulator.__main__ import parse_config
from app.upstream.registry import BUILTIN_MODELS
from tests.simulator.conftest import StartSim

PROMPT = [{"role": "user", "content": "hello"}]


async def test_each_model_has_its_registry_window(start_sim: StartSim) -> None:
    sim = await start_sim()
    client = sim.client()
    listed = [m.id for m in (await client.models.list()).data]
    assert sorted(listed) == sorted(BUILTIN_MODELS)  # all five, as the service knows them
    # 200,000 completion tokens fit kimi-k2.5 (262,144) and gpt-4.1, not deepseek-v3.2.
    for model in ("kimi-k2.5", "gpt-4.1", "claude-sonnet-4.5"):
        await client.chat.completions.create(
            model=model, messages=PROMPT, max_tokens=199_000, timeout=30
        )
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(
            model="deepseek-v3.2", messages=PROMPT, max_tokens=200_000
        )
    assert info.value.code == "context_length_exceeded"
    assert "maximum context length is 131072 tokens" in info.value.message
    # Under the name sent upstream too, and the fallback for a model no one described.
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(
            model="deepseek-chat", messages=PROMPT, max_tokens=200_000
        )
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="homemade", messages=PROMPT, max_tokens=140_000)
    assert "131072 tokens" in info.value.message


async def test_a_models_file_adds_models_and_windows(start_sim: StartSim, tmp_path: Path) -> None:
    models = tmp_path / "models.yaml"
    models.write_text("models:\n  small-window: {context_window: 4000}\n")
    sim = await start_sim(models_file=str(models))
    client = sim.client()
    assert "small-window" in [m.id for m in (await client.models.list()).data]
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="small-window", messages=PROMPT, max_tokens=4000)
    assert "maximum context length is 4000 tokens" in info.value.message


def test_the_models_file_comes_from_the_services_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "models.yaml"
    models.write_text("models:\n  small-window: {context_window: 4000}\n")
    monkeypatch.setenv("SWARM_MODELS_FILE", str(models))
    config = parse_config([])
    assert config.window_for("small-window") == 4000
    assert config.window_for("kimi-k2.5") == 262_144
    # An explicit window still applies to every model.
    assert parse_config(["--context-window", "100"]).window_for("kimi-k2.5") == 100
    models.write_text("models: [not, a, mapping]\n")
    with pytest.raises(SystemExit):
        parse_config(["--models-file", str(models)])
