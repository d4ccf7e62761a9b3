"""Model registry: built-in prices, the models file, routing to upstreams."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import Settings
from app.upstream.pool import NoRouteError, UpstreamPool
from app.upstream.registry import BUILTIN_MODELS, ModelRegistry, RegistryFileError

ROOT = Path(__file__).resolve().parents[2]


def test_builtin_models_have_prices_and_windows() -> None:
    for name in ("kimi-k2.5", "deepseek-v3.2", "gpt-4.1", "claude-sonnet-4.5", "gemini-2.5-flash"):
        info = BUILTIN_MODELS[name]
        assert info.input_usd_per_mtok is not None and info.output_usd_per_mtok is not None
        assert info.context_window and info.provider
    # The seed article's output prices.
    assert BUILTIN_MODELS["deepseek-v3.2"].output_usd_per_mtok == 0.42
    assert BUILTIN_MODELS["gpt-4.1"].output_usd_per_mtok == 8.00
    assert BUILTIN_MODELS["claude-sonnet-4.5"].output_usd_per_mtok == 15.00
    assert BUILTIN_MODELS["gemini-2.5-flash"].output_usd_per_mtok == 2.50


def test_cost_is_usage_times_price_and_null_when_unknown() -> None:
    reg = ModelRegistry()
    assert reg.get("gpt-4.1").cost(1_000_000, 500_000) == pytest.approx(2.0 + 4.0)
    assert reg.get("no-such-model").cost(10, 10) is None
    assert reg.get("gpt-4.1").cost(None, 10) is None


def test_example_models_file_loads_and_overlays_builtins() -> None:
    reg = ModelRegistry.load(ROOT / "models.example.yaml")
    kimi = reg.get("kimi-k2.5")
    assert kimi.rpm == 500 and kimi.max_concurrency == 64
    assert kimi.input_usd_per_mtok == 0.60  # kept from the built-in entry
    assert kimi.extra_body == {"thinking": {"type": "disabled"}}
    qwen = reg.get("qwen3-32b")
    assert qwen.wire_name == "Qwen/Qwen3-32B" and qwen.cost(100, 100) == 0
    assert reg.pinned == {"qwen3-32b"}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("models: [1, 2]", "models file"),
        ("colours: {}", "'providers' and/or 'models'"),
        ("models: {m: {provider: nowhere}}", "unknown provider 'nowhere'"),
        ("models: {m: {input_usd_per_mtok: -1}}", "input_usd_per_mtok"),
        ("models: {m: {prise: 1}}", "prise"),
        ("providers: {p: {}}", "base_url"),
        ("{ not yaml", "cannot read"),
        ("models: {}\nmodels: {}", "appears twice"),
    ],
)
def test_bad_models_files_are_refused_with_the_reason(
    tmp_path: Path, text: str, needle: str
) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    with pytest.raises(RegistryFileError, match=None) as info:
        ModelRegistry.load(path)
    assert needle in str(info.value)


def test_routing_prefers_pinned_then_default_then_builtin_provider(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(
        "providers: {mine: {base_url: 'http://127.0.0.1:1/v1', api_key_env: MINE_KEY}}\n"
        "models: {pinned-model: {provider: mine}}\n"
    )
    reg = ModelRegistry.load(path)
    settings = Settings()
    env = {"MINE_KEY": "k", "DEEPSEEK_API_KEY": "d"}
    with_default = UpstreamPool(
        settings, reg, default_base_url="http://127.0.0.1:2/v1", default_api_key=None, env=env
    )
    assert with_default.route("pinned-model").upstream.name == "mine"
    assert with_default.route("deepseek-v3.2").upstream.name == "default"
    assert with_default.route("anything-else").upstream.name == "default"

    no_default = UpstreamPool(settings, reg, default_base_url=None, default_api_key=None, env=env)
    assert no_default.route("deepseek-v3.2").upstream.name == "deepseek"
    assert no_default.route("deepseek-v3.2").wire_model == "deepseek-chat"
    # Through a gateway (the default upstream) a built-in model keeps our name.
    assert with_default.route("deepseek-v3.2").wire_model == "deepseek-v3.2"
    with pytest.raises(NoRouteError, match="MOONSHOT_API_KEY"):
        no_default.route("kimi-k2.5")
    with pytest.raises(NoRouteError, match="SWARM_UPSTREAM_BASE_URL"):
        no_default.route("unknown-model")

    missing_key = UpstreamPool(settings, reg, default_base_url=None, default_api_key=None, env={})
    with pytest.raises(NoRouteError, match="set MINE_KEY"):
        missing_key.route("pinned-model")


def test_simulator_only_when_nothing_is_configured() -> None:
    reg = ModelRegistry()
    assert UpstreamPool.nothing_configured(Settings(), reg, env={})
    assert not UpstreamPool.nothing_configured(Settings(), reg, env={"OPENAI_API_KEY": "x"})
    assert not UpstreamPool.nothing_configured(
        Settings(upstream_base_url="http://127.0.0.1:1/v1"), reg, env={}
    )
