"""GET /upstream: reachability, credentials and models of each upstream, as plain advice.

In-process against the app, the upstream faked at the transport (httpx2_mock); the last
tests use the real simulator, as the built-in one and as a separate process with a key.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from pytest_httpx2 import HTTPXMock

from app.config import HttpTransport, Settings
from app.upstream import check as check_module
from app.upstream.check import check_upstreams
from app.upstream.pool import UpstreamPool
from app.upstream.registry import BUILTIN_PROVIDERS, ModelRegistry
from tests.helpers.processes import start_simulator
from tests.helpers.service import UPSTREAM, UPSTREAM_KEY, Service, make_settings, start_service

MODELS_URL = f"{UPSTREAM}/models"
CHAT_URL = f"{UPSTREAM}/chat/completions"
OTHER = "http://other.test/v1"
OTHER_KEY = "sk-other-provider-key-9876543210"


@pytest.fixture(autouse=True)
def _no_provider_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    # Routing depends on which provider keys the environment holds: none, unless a test says.
    for provider in BUILTIN_PROVIDERS.values():
        if provider.api_key_env:
            monkeypatch.delenv(provider.api_key_env, raising=False)


def models_body(*ids: str) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": i, "object": "model", "created": 0, "owned_by": "test"} for i in ids],
    }


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "code": str(status)}}


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Service]:
    gen = start_service(settings)
    svc = await anext(gen)
    try:
        yield svc
    finally:
        await gen.aclose()


async def report(settings: Settings) -> tuple[dict[str, Any], str]:
    """GET /upstream once: the parsed body and its raw text (to search for secrets)."""
    async with running(settings) as svc:
        resp = await svc.client.get("/upstream")
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body, resp.text


def entry(body: dict[str, Any], name: str = "default") -> dict[str, Any]:
    (found,) = [u for u in body["upstreams"] if u["name"] == name]
    return found


def models_by_name(upstream: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["model"]: m for m in upstream["models"]}


def advice_text(upstream: dict[str, Any]) -> str:
    return "\n".join(upstream["advice"])


async def test_model_list_is_reported_and_models_it_lacks_are_named(
    tmp_path: Path, httpx2_mock: HTTPXMock
) -> None:
    httpx2_mock.add_response(
        url=MODELS_URL, json=models_body("kimi-k2.5", "deepseek-v3.2", "moonshot-v1-8k")
    )
    body, _ = await report(make_settings(tmp_path))

    assert body["status"] == "ok"  # the default model is offered
    assert body["advice"] == []
    up = entry(body)
    assert up["status"] == "ok" and up["probe"] == "models" and up["http_status"] == 200
    assert up["base_url"] == UPSTREAM and up["api_key_env"] == "SWARM_UPSTREAM_API_KEY"
    assert up["simulator"] is False
    assert isinstance(up["latency_ms"], float) and up["latency_ms"] >= 0
    assert up["models_offered"] == ["kimi-k2.5", "deepseek-v3.2", "moonshot-v1-8k"]
    assert up["models_offered_total"] == 3
    # Every built-in model goes to the default upstream when one is configured.
    models = models_by_name(up)
    assert set(models) == {
        "kimi-k2.5",
        "deepseek-v3.2",
        "gpt-4.1",
        "claude-sonnet-4.5",
        "gemini-2.5-flash",
    }
    assert models["kimi-k2.5"] == {
        "model": "kimi-k2.5",
        "upstream_name": "kimi-k2.5",
        "default": True,
        "offered": True,
    }
    assert models["deepseek-v3.2"]["offered"] is True
    assert models["gpt-4.1"]["offered"] is False
    offers = "it offers: kimi-k2.5, deepseek-v3.2, moonshot-v1-8k"
    assert f"unknown model: gpt-4.1; {offers}" in up["advice"]
    assert f"unknown model: claude-sonnet-4.5; {offers}" in up["advice"]
    assert not any("kimi-k2.5;" in a or "deepseek-v3.2;" in a for a in up["advice"])
    # The check went through the configured client: with its key, to the right URL.
    (request,) = httpx2_mock.get_requests()
    assert request.method == "GET" and str(request.url) == MODELS_URL
    assert request.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"


async def test_default_model_not_offered_degrades_and_suggests_the_closest(
    tmp_path: Path, httpx2_mock: HTTPXMock
) -> None:
    httpx2_mock.add_response(url=MODELS_URL, json=models_body("kimi-k2-0905", "moonshot-v1-8k"))
    body, _ = await report(make_settings(tmp_path))

    assert body["status"] == "degraded"
    assert any("SWARM_DEFAULT_MODEL" in a and "'kimi-k2.5'" in a for a in body["advice"])
    up = entry(body)
    assert up["status"] == "ok"
    assert models_by_name(up)["kimi-k2.5"]["offered"] is False
    (kimi,) = [a for a in up["advice"] if a.startswith("unknown model: kimi-k2.5")]
    assert "(the default model, SWARM_DEFAULT_MODEL)" in kimi
    assert "it offers: kimi-k2-0905, moonshot-v1-8k" in kimi
    assert "closest: kimi-k2-0905" in kimi


async def test_a_long_model_list_is_truncated(tmp_path: Path, httpx2_mock: HTTPXMock) -> None:
    ids = ["kimi-k2.5", *(f"model-{i:03d}" for i in range(250))]
    httpx2_mock.add_response(url=MODELS_URL, json=models_body(*ids))
    body, _ = await report(make_settings(tmp_path))

    up = entry(body)
    assert up["models_offered"] == ids[:100] and up["models_offered_total"] == 251
    (gpt,) = [a for a in up["advice"] if a.startswith("unknown model: gpt-4.1")]
    assert "model-013 (and 236 more)" in gpt and "model-014" not in gpt


@pytest.mark.parametrize(
    ("status", "expected", "needles"),
    [
        (401, "auth_failed", ["(401)", "SWARM_UPSTREAM_API_KEY is wrong or revoked"]),
        (
            403,
            "forbidden",
            ["(403)", "plan or project behind the key in SWARM_UPSTREAM_API_KEY lacks access"],
        ),
        (429, "error", ["rate limited (429)", "quota"]),
        (503, "error", ["(503)", "try again later"]),
        (400, "error", ["refused GET", "(400)"]),
    ],
)
async def test_http_failures_become_advice(
    tmp_path: Path, httpx2_mock: HTTPXMock, status: int, expected: str, needles: list[str]
) -> None:
    httpx2_mock.add_response(
        url=MODELS_URL, status_code=status, json=error_body(status, "You shall not pass.")
    )
    body, _ = await report(make_settings(tmp_path))

    assert body["status"] == "failed"  # its only upstream is not ok
    up = entry(body)
    assert up["status"] == expected and up["http_status"] == status
    assert up["probe"] == "models"
    assert up["models_offered"] == [] and up["models_offered_total"] is None
    assert all(m["offered"] is None for m in up["models"])
    text = advice_text(up)
    for needle in needles:
        assert needle in text
    if status != 401:  # a 401's own words are left out: they often quote the key
        assert "upstream said: You shall not pass." in text


async def test_401_without_a_key_says_to_set_one(tmp_path: Path, httpx2_mock: HTTPXMock) -> None:
    httpx2_mock.add_response(url=MODELS_URL, status_code=401, json=error_body(401, "no key"))
    body, _ = await report(make_settings(tmp_path, upstream_api_key=None))

    up = entry(body)
    assert up["status"] == "auth_failed"
    assert "no key is set: set SWARM_UPSTREAM_API_KEY" in advice_text(up)


# A key shaped like no known key format is not caught by the generic redaction.
@pytest.mark.parametrize("key", [UPSTREAM_KEY, "letmein-2024"])
async def test_no_key_appears_in_the_answer_or_the_log(
    tmp_path: Path, httpx2_mock: HTTPXMock, caplog: pytest.LogCaptureFixture, key: str
) -> None:
    # Upstreams echo keys back (OpenAI's 401 quotes it); the answer and the log must not.
    httpx2_mock.add_response(
        url=MODELS_URL,
        status_code=403,
        json=error_body(403, f"Key {key} (Bearer {key}) has no access"),
        headers={"x-echo": key},
    )
    caplog.set_level(logging.DEBUG)
    body, text = await report(make_settings(tmp_path, upstream_api_key=key))

    up = entry(body)
    assert up["status"] == "forbidden"
    assert "has no access" in advice_text(up) and "[redacted]" in advice_text(up)
    assert "upstream 'default': forbidden" in caplog.text  # the log was captured
    for secret in (key, key[3:], "Bearer", "Authorization"):
        assert secret not in text
        assert secret not in caplog.text


async def test_read_timeout_names_the_url_and_the_time_out(
    tmp_path: Path, httpx2_mock: HTTPXMock
) -> None:
    def hang(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ReadTimeout("read timed out", request=request)

    httpx2_mock.add_callback(hang, url=MODELS_URL)
    body, _ = await report(make_settings(tmp_path, upstream_check_timeout_s=2.5))

    up = entry(body)
    assert body["status"] == "failed"
    assert up["status"] == "timeout" and up["http_status"] is None
    text = advice_text(up)
    assert f"no answer from {UPSTREAM} within 2.5 s (SWARM_UPSTREAM_CHECK_TIMEOUT_S)" in text
    assert "unreachable from here" in text


async def test_a_hanging_upstream_is_cut_off_at_the_time_out(
    tmp_path: Path, httpx2_mock: HTTPXMock
) -> None:
    async def never(request: httpx2.Request) -> httpx2.Response:
        await asyncio.sleep(30)
        raise AssertionError("not cut off")

    httpx2_mock.add_callback(never, url=MODELS_URL)
    loop = asyncio.get_running_loop()
    async with running(make_settings(tmp_path, upstream_check_timeout_s=0.3)) as svc:
        started = loop.time()
        resp = await svc.client.get("/upstream")
        elapsed = loop.time() - started
    assert resp.status_code == 200
    # Cut off: well before the 30 s the upstream would take (slack for a loaded machine).
    assert 0.3 <= elapsed < 15.0
    up = entry(resp.json())
    assert up["status"] == "timeout" and up["latency_ms"] >= 300
    assert "within 0.3 s" in advice_text(up)


async def test_connection_refused_is_unreachable(tmp_path: Path, httpx2_mock: HTTPXMock) -> None:
    httpx2_mock.add_exception(httpx2.ConnectError("Connection refused"), url=MODELS_URL)
    body, _ = await report(make_settings(tmp_path, upstream_check_timeout_s=4))

    up = entry(body)
    assert body["status"] == "failed"
    assert up["status"] == "unreachable" and up["http_status"] is None
    text = advice_text(up)
    assert f"cannot connect to {UPSTREAM} (ConnectError)" in text
    assert "unreachable from here" in text and "time-out 4 s" in text


@pytest.mark.parametrize("missing", [404, 405])
async def test_without_models_endpoint_one_token_chat_decides(
    tmp_path: Path, httpx2_mock: HTTPXMock, missing: int
) -> None:
    httpx2_mock.add_response(url=MODELS_URL, status_code=missing, text="Not Found")
    httpx2_mock.add_response(
        url=CHAT_URL,
        json={
            "id": "c",
            "object": "chat.completion",
            "created": 0,
            "model": "kimi-k2.5",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "p"},
                    "finish_reason": "length",
                }
            ],
        },
    )
    body, _ = await report(make_settings(tmp_path))

    assert body["status"] == "ok"
    up = entry(body)
    assert up["status"] == "ok" and up["probe"] == "chat" and up["http_status"] == 200
    assert up["models_offered"] == [] and up["models_offered_total"] is None
    models = models_by_name(up)
    assert models["kimi-k2.5"]["offered"] is True
    assert models["gpt-4.1"]["offered"] is None  # not asked about
    (chat,) = httpx2_mock.get_requests(url=CHAT_URL)
    sent = json.loads(chat.content)
    assert sent["model"] == "kimi-k2.5" and sent["max_tokens"] == 1
    assert chat.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"


async def test_without_models_endpoint_a_chat_404_means_unknown_model(
    tmp_path: Path, httpx2_mock: HTTPXMock
) -> None:
    httpx2_mock.add_response(url=MODELS_URL, status_code=404, text="Not Found")
    httpx2_mock.add_response(
        url=CHAT_URL, status_code=404, json=error_body(404, "model kimi-k2.5 does not exist")
    )
    body, _ = await report(make_settings(tmp_path))

    assert body["status"] == "degraded"
    up = entry(body)
    assert up["status"] == "ok" and up["probe"] == "chat" and up["http_status"] == 404
    assert models_by_name(up)["kimi-k2.5"]["offered"] is False
    text = advice_text(up)
    assert "unknown model: kimi-k2.5;" in text
    assert "does not list its models (GET /models answered 404)" in text
    assert "upstream said: model kimi-k2.5 does not exist" in text


async def test_without_models_endpoint_a_chat_401_is_auth_failed(
    tmp_path: Path, httpx2_mock: HTTPXMock
) -> None:
    httpx2_mock.add_response(url=MODELS_URL, status_code=405, text="Method Not Allowed")
    httpx2_mock.add_response(url=CHAT_URL, status_code=401, json=error_body(401, "bad key"))
    body, _ = await report(make_settings(tmp_path))

    up = entry(body)
    assert up["status"] == "auth_failed" and up["probe"] == "chat" and up["http_status"] == 401
    assert "SWARM_UPSTREAM_API_KEY is wrong or revoked" in advice_text(up)


async def test_a_body_that_is_no_model_list_points_at_the_base_url(
    tmp_path: Path, httpx2_mock: HTTPXMock
) -> None:
    httpx2_mock.add_response(url=MODELS_URL, html="<html><body>Welcome!</body></html>")
    body, _ = await report(make_settings(tmp_path))

    up = entry(body)
    assert up["status"] == "error" and up["http_status"] == 200
    text = advice_text(up)
    assert "answered 200 but not with a model list" in text and "/v1" in text


async def test_an_unexpected_exception_is_an_error_entry_without_secrets(
    tmp_path: Path,
    httpx2_mock: HTTPXMock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"internal state with {UPSTREAM_KEY}")

    monkeypatch.setattr(check_module._Checker, "_probe", broken)
    body, text = await report(make_settings(tmp_path))

    up = entry(body)
    assert body["status"] == "failed"
    assert up["status"] == "error"
    assert "failed unexpectedly (RuntimeError)" in advice_text(up)
    assert "failed unexpectedly: RuntimeError" in caplog.text
    assert UPSTREAM_KEY not in text and UPSTREAM_KEY not in caplog.text


async def test_a_busy_pool_is_told_apart_from_a_dead_upstream(
    tmp_path: Path, httpx2_mock: HTTPXMock
) -> None:
    settings = make_settings(tmp_path, pool_max_connections=1, upstream_check_timeout_s=0.2)
    async with running(settings) as svc:
        upstream = svc.app.state.services.upstreams.upstreams["default"]
        async with upstream.connections:  # an agent call holds the only connection
            resp = await svc.client.get("/upstream")
    up = entry(resp.json())
    assert up["status"] == "timeout" and up["probe"] is None
    assert "for a free connection" in advice_text(up)
    assert httpx2_mock.get_requests() == []


async def test_upstreams_are_checked_concurrently_each_with_its_own_key_variable(
    tmp_path: Path, httpx2_mock: HTTPXMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    models_file = tmp_path / "models.yaml"
    models_file.write_text(
        f"providers: {{other: {{base_url: '{OTHER}', api_key_env: OTHER_KEY}}}}\n"
        "models: {qwen-local: {provider: other, upstream_name: Qwen/Qwen3-32B}}\n"
    )
    monkeypatch.setenv("OTHER_KEY", OTHER_KEY)
    in_flight = peak = 0

    async def slowly(response: httpx2.Response) -> httpx2.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.2)
        in_flight -= 1
        return response

    async def default(request: httpx2.Request) -> httpx2.Response:
        return await slowly(httpx2.Response(200, json=models_body("kimi-k2.5")))

    async def other(request: httpx2.Request) -> httpx2.Response:
        assert request.headers["Authorization"] == f"Bearer {OTHER_KEY}"
        return await slowly(httpx2.Response(401, json=error_body(401, f"bad key {OTHER_KEY}")))

    httpx2_mock.add_callback(default, url=MODELS_URL)
    httpx2_mock.add_callback(other, url=f"{OTHER}/models")
    body, text = await report(make_settings(tmp_path, models_file=str(models_file)))

    assert peak == 2
    assert body["status"] == "degraded"
    assert [u["name"] for u in body["upstreams"]] == ["default", "other"]
    assert entry(body)["status"] == "ok"
    assert "qwen-local" not in models_by_name(entry(body))
    other_entry = entry(body, "other")
    assert other_entry["status"] == "auth_failed" and other_entry["api_key_env"] == "OTHER_KEY"
    assert other_entry["models"] == [
        {
            "model": "qwen-local",
            "upstream_name": "Qwen/Qwen3-32B",
            "default": False,
            "offered": None,
        }
    ]
    assert "the key in OTHER_KEY is wrong or revoked" in advice_text(other_entry)
    assert OTHER_KEY not in text and UPSTREAM_KEY not in text


async def test_a_provider_key_behind_a_default_upstream_gets_no_models(
    tmp_path: Path, httpx2_mock: HTTPXMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-deepseek-test-key-000000")
    httpx2_mock.add_response(url=MODELS_URL, json=models_body("kimi-k2.5"))
    httpx2_mock.add_response(
        url="https://api.deepseek.com/v1/models", json=models_body("deepseek-chat")
    )
    body, text = await report(make_settings(tmp_path))

    deepseek = entry(body, "deepseek")
    assert deepseek["status"] == "ok" and deepseek["api_key_env"] == "DEEPSEEK_API_KEY"
    assert deepseek["models"] == []
    assert "no model is routed to this upstream" in advice_text(deepseek)
    assert "sk-deepseek-test-key-000000" not in text


async def test_no_upstream_at_all_is_failed(tmp_path: Path) -> None:
    registry = ModelRegistry()
    settings = make_settings(tmp_path, upstream_base_url=None, upstream_api_key=None)
    pool = UpstreamPool(settings, registry, default_base_url=None, default_api_key=None, env={})
    try:
        result = await check_upstreams(pool, registry, settings)
    finally:
        await pool.aclose()
    assert result.status == "failed" and result.upstreams == []
    assert any("no upstream is configured" in a for a in result.advice)
    assert any("default model (SWARM_DEFAULT_MODEL) cannot be served" in a for a in result.advice)


# ---------------------------------------------------------------- against the real simulator


async def test_the_builtin_simulator_says_so(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        upstream_base_url=None,
        upstream_api_key=None,
        http_transport=HttpTransport.aiohttp,
        simulator_latency_ms="1,2",
    )
    body, _ = await report(settings)

    assert body["status"] == "ok"
    up = entry(body)
    assert up["simulator"] is True and up["status"] == "ok" and up["http_status"] == 200
    assert up["base_url"].startswith("http://127.0.0.1:")
    assert "kimi-k2.5" in up["models_offered"]
    # It answers any model name, so none is reported missing.
    assert all(m["offered"] is True for m in up["models"])
    assert not any(a.startswith("unknown model") for a in up["advice"])
    assert "built-in simulator" in advice_text(up)


@pytest.mark.e2e
async def test_against_the_simulator_process_with_a_key(tmp_path: Path) -> None:
    sim_key = "sk-simulator-key-abcdef0123456789"
    sim = start_simulator(tmp_path, "--api-key", sim_key, "--models", "kimi-k2.5,qwen-test")
    try:
        common: dict[str, Any] = {
            "upstream_base_url": sim.url + "/v1",
            "http_transport": HttpTransport.aiohttp,
        }
        good, good_text = await report(
            make_settings(tmp_path / "good", upstream_api_key=sim_key, **common)
        )
        bad, bad_text = await report(make_settings(tmp_path / "bad", **common))
    finally:
        sim.stop()

    assert good["status"] == "ok"
    up = entry(good)
    assert up["status"] == "ok" and up["simulator"] is False
    assert up["models_offered"] == ["kimi-k2.5", "qwen-test"]
    assert models_by_name(up)["kimi-k2.5"]["offered"] is True
    assert "unknown model: gpt-4.1; it offers: kimi-k2.5, qwen-test" in up["advice"]

    assert bad["status"] == "failed"
    up = entry(bad)
    assert up["status"] == "auth_failed" and up["http_status"] == 401
    assert "SWARM_UPSTREAM_API_KEY is wrong or revoked" in advice_text(up)
    for text in (good_text, bad_text):
        assert sim_key not in text and UPSTREAM_KEY not in text


async def test_swarmctl_upstream_on_the_builtin_simulator_tells_the_truth(tmp_path: Path) -> None:
    from rich.console import Console

    from app.cli.views import show_upstream

    models = tmp_path / "models.yaml"
    models.write_text("models:\n  homemade: {context_window: 8000}\n")
    settings = make_settings(
        tmp_path,
        upstream_base_url=None,
        upstream_api_key=None,
        http_transport=HttpTransport.aiohttp,
        simulator_latency_ms="1,2",
        models_file=str(models),
    )
    body, _ = await report(settings)
    up = entry(body)
    assert up["simulator"] is True and up["api_key_set"] is False
    routed = [m["model"] for m in up["models"]]
    assert "homemade" in routed and "kimi-k2.5" in routed
    # What it offers includes every model it is ticked for: the count and the ticks agree.
    assert set(routed) <= set(up["models_offered"])
    assert up["models_offered_total"] == len(up["models_offered"])

    console = Console(record=True, width=200)
    show_upstream(console, body)
    text = console.export_text()
    assert f"offers {up['models_offered_total']} models" in text
    assert text.count("✓") == len(routed)
    assert "key from" not in text and "none (the built-in simulator needs none)" in text


def test_swarmctl_upstream_says_when_no_key_is_set() -> None:
    from rich.console import Console

    from app.cli.views import show_upstream

    up = {
        "name": "default",
        "base_url": UPSTREAM,
        "api_key_env": "SWARM_UPSTREAM_API_KEY",
        "api_key_set": False,
        "simulator": False,
        "status": "auth_failed",
        "models": [],
        "advice": [],
    }
    for key_set, line in (
        (False, "key none: SWARM_UPSTREAM_API_KEY is not set"),
        (True, "key from SWARM_UPSTREAM_API_KEY"),
    ):
        console = Console(record=True, width=200)
        show_upstream(console, {"status": "failed", "upstreams": [{**up, "api_key_set": key_set}]})
        assert line in console.export_text()


async def test_a_server_listing_one_alias_is_not_said_to_lack_the_other_models(
    tmp_path: Path, httpx2_mock: HTTPXMock
) -> None:
    """llama-server lists its one alias and answers any model name with it: the models it
    does not list are "not listed", said with why, never "unknown"."""
    httpx2_mock.add_response(url=MODELS_URL, json=models_body("local"))
    body, _ = await report(make_settings(tmp_path))
    up = entry(body)
    assert up["status"] == "ok" and up["models_offered"] == ["local"]
    models = models_by_name(up)
    assert models["kimi-k2.5"]["offered"] is None and models["gpt-4.1"]["offered"] is None
    assert body["status"] == "ok"  # not degraded on a guess
    assert not any(a.startswith("unknown model") for a in up["advice"])
    (kimi,) = [a for a in up["advice"] if a.startswith("not listed: kimi-k2.5")]
    assert "lists one model only (local)" in kimi
    assert "may answer any model name with local" in kimi
    assert "SWARM_DEFAULT_MODEL=local" in kimi
