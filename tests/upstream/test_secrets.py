"""A configured upstream key never leaves the upstream boundary, whole or in part: not in
an error message, not in an answer, not in a log line."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import httpx2
import openai
import pytest
from pytest_httpx2 import HTTPXMock

from app.config import Settings
from app.logging_setup import RedactSecrets
from app.text import REDACTED, SECRETS, mask_fragments, secret_fragments
from app.upstream.client import AgentRequest, call_chat
from app.upstream.errors import FailureReason, classify, register_secret
from tests.helpers.service import UPSTREAM_KEY, FakeUpstream, Service, completion_body
from tests.upstream.test_retry_and_errors import status_error

KEY = "sk-Zq9vLw3TnB7xKe2RuM5yPc8H"  # shaped like a real one: random base62


def leaks(text: str, key: str = KEY) -> list[str]:
    """Every run of 8 characters of ``key`` still in ``text`` (white space ignored), but
    runs of lower-case letters and punctuation alone ("upstream" in the test key)."""
    compact = "".join(text.split())
    runs = [key[i : i + 8] for i in range(len(key) - 7)]
    return [run for run in runs if run in compact and any(c.isdigit() or c.isupper() for c in run)]


@pytest.mark.parametrize(
    "echo",
    [
        KEY,
        KEY[:12],  # a prefix, as a 401 quotes it
        KEY[-9:],  # a suffix ("…yPc8H")
        KEY[5:13],  # exactly 8 characters from the middle
        KEY[:10] + " " + KEY[10:],  # a space slipped inside
        " ".join(KEY),  # a space between every character
        KEY[:6] + "\n\t" + KEY[6:16] + "\u200b" + KEY[16:],
    ],
)
def test_fragments_of_a_key_are_masked_with_white_space_inside(echo: str) -> None:
    fragments = secret_fragments(KEY)
    masked = mask_fragments(f"Incorrect API key provided: {echo}. Check it.", fragments)
    assert leaks(masked) == [] and REDACTED in masked
    assert masked.startswith("Incorrect API key provided: ") and masked.endswith(". Check it.")


def test_text_without_a_fragment_is_returned_as_is() -> None:
    fragments = secret_fragments(KEY)
    for text in ("", "the upstream did not answer", KEY[:7], KEY[3:10] + " and more"):
        assert mask_fragments(text, fragments) == text
    # Words inside a made-up key are not masked everywhere: only runs with a digit or a
    # capital count (with the whole key always).
    made_up = secret_fragments("upstream-secret-7f3a9c1e5b")
    assert mask_fragments("the upstream is secret", made_up) == "the upstream is secret"
    assert mask_fragments("got secret-7f3a9c", made_up) == "got [redacted]"


def test_classified_errors_carry_no_fragment_of_a_configured_key() -> None:
    register_secret(KEY)
    for status in (400, 403, 404, 429, 500):
        body = {"error": {"message": f"key '{KEY[:4]} {KEY[4:14]}' (ends {KEY[-8:]}) refused"}}
        failure = classify(
            status_error(status, body),
            agent_id="a",
            model="m",
            context_window=None,
            prompt_chars=1,
        )
        assert leaks(failure.message) == [], (status, failure.message)
    # A message of our own that names the model keeps its words.
    failure = classify(
        status_error(404, {"error": {"message": "no such model"}}),
        agent_id="a",
        model="kimi-k2.5",
        context_window=None,
        prompt_chars=1,
    )
    assert failure.reason is FailureReason.model_not_found and "'kimi-k2.5'" in failure.message


async def test_an_answer_quoting_the_key_is_masked_at_the_client() -> None:
    register_secret(KEY)

    def answer(_request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json=completion_body(f"Your key is {KEY[:9]} {KEY[9:]}."))

    http = httpx2.AsyncClient(transport=httpx2.MockTransport(answer))
    client = openai.AsyncOpenAI(
        base_url="http://upstream.test/v1", api_key=KEY, http_client=http, max_retries=0
    )
    async with http:
        result = await call_chat(client, AgentRequest(model="m", system_prompt=None, prompt="p"))
    assert result.output == "Your key is [redacted]."


def test_the_log_filter_masks_messages_fields_and_tracebacks() -> None:
    register_secret(KEY)
    try:
        raise RuntimeError(f"boom {KEY[2:14]}")
    except RuntimeError:
        import sys

        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "seen %s", (KEY,), exc_info=sys.exc_info()
        )
    record.error = f"upstream said {KEY[-10:]}"
    assert RedactSecrets().filter(record)
    line = logging.Formatter("%(message)s %(error)s").format(record)
    assert leaks(line) == [] and line.count(REDACTED) == 3, line
    assert "RuntimeError: boom [redacted]" in line


async def test_a_key_echoed_in_parts_reaches_no_output_event_error_or_row(
    service: Service, fake_upstream: FakeUpstream, settings: Settings
) -> None:
    # The service's own key (from the settings) is registered at start-up.
    assert SECRETS.mask(UPSTREAM_KEY) == REDACTED
    spaced = UPSTREAM_KEY[:14] + " " + UPSTREAM_KEY[14:]

    def script(body: dict[str, object], n: int) -> httpx2.Response | None:
        prompt = str(body["messages"][-1]["content"])  # type: ignore[index]
        if "echo" in prompt:
            return httpx2.Response(200, json=completion_body(f"the key was {spaced}"))
        return httpx2.Response(
            400, json={"error": {"message": f"bad key fragment {UPSTREAM_KEY[12:]}"}}
        )

    fake_upstream.script = script
    job = await service.submit(
        {
            "failure_policy": "continue",
            "agents": [{"id": "echo", "task": "echo"}, {"id": "fail", "task": "fail"}],
        }
    )
    await service.wait(job["id"])
    echo = (await service.client.get(f"/jobs/{job['id']}/agents/echo")).json()
    fail = (await service.client.get(f"/jobs/{job['id']}/agents/fail")).json()
    assert echo["output"] == "the key was [redacted]"
    assert "[redacted]" in fail["last_error"]
    events = (await service.client.get(f"/jobs/{job['id']}/events")).text
    results = (await service.client.get(f"/jobs/{job['id']}/results")).text
    db = Path(settings.database_url.removeprefix("sqlite:///"))
    with sqlite3.connect(db) as conn:
        rows = "\n".join(
            str(row)
            for table in ("agents", "events", "jobs")
            for row in conn.execute(f"SELECT * FROM {table}")
        )
    for text in (str(echo), str(fail), events, results, rows):
        assert leaks(text, UPSTREAM_KEY) == []


MCP_TOKEN = "Bearer mcpTok3n-Qw7Er9Ty2Ui"


async def test_an_mcp_header_value_echoed_back_reaches_no_result_event_or_row(
    tmp_path: Path,
    fake_upstream: FakeUpstream,
    httpx2_mock: HTTPXMock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.helpers.service import make_settings, start_service
    from tests.helpers.tools import TOOL_SECRET, TOOL_URL, ask_tools, tool_results

    monkeypatch.setenv("NOTES_MCP_TOKEN", MCP_TOKEN)
    # The MCP server (faked at the transport) quotes the header it was sent; so does the
    # caller's tool, which the model is then shown.
    httpx2_mock.add_callback(
        lambda request: httpx2.Response(
            401, text=f"token {request.headers.get('authorization')} is not valid"
        ),
        url="http://mcp.test/mcp",
        is_reusable=True,
        is_optional=True,
    )
    httpx2_mock.add_callback(
        lambda request: httpx2.Response(200, json={"seen": MCP_TOKEN}),
        url=TOOL_URL,
        is_reusable=True,
        is_optional=True,
    )
    mcp = {
        "type": "mcp",
        "url": "http://mcp.test/mcp",
        "headers_env": {"Authorization": "NOTES_MCP_TOKEN"},
    }
    http = {"type": "http", "name": "lookup", "url": TOOL_URL}
    fake_upstream.script = ask_tools([[("lookup", "{}")]])
    settings = make_settings(tmp_path, tool_allow_private=True, webhook_secret=TOOL_SECRET)
    async for service in start_service(settings):
        job = await service.submit(
            {
                "failure_policy": "continue",
                "agents": [
                    {"id": "mcp", "task": "t", "tools": [mcp]},
                    {"id": "echo", "task": "u", "tools": [http], "depends_on": ["mcp"]},
                ],
            }
        )
        await service.wait(job["id"])
        failed = (await service.client.get(f"/jobs/{job['id']}/agents/mcp")).json()
        echo = (await service.client.get(f"/jobs/{job['id']}/agents/echo")).json()
        events = (await service.client.get(f"/jobs/{job['id']}/events")).text
        assert failed["status"] == "failed"
        assert "could not be listed" in failed["last_error"]
        # The tool's answer was masked before the model (and the transcript) saw it.
        assert tool_results(fake_upstream.calls[-1]) == ['{"seen": "[redacted]"}']
    with sqlite3.connect(tmp_path / "swarm.db") as conn:
        rows = "\n".join(
            str(row)
            for table in ("agents", "events", "jobs", "agent_steps")
            for row in conn.execute(f"SELECT * FROM {table}")
        )
    for text in (str(failed), str(echo), events, rows, str(fake_upstream.calls)):
        assert leaks(text, MCP_TOKEN.removeprefix("Bearer ")) == []
