"""max_tokens over the model's context window is refused at submit, before anything is
stored or called (it used to be accepted and then fail at run time)."""

from __future__ import annotations

from typing import Any

import httpx2

from tests.helpers.service import FakeUpstream, Service


async def test_submit_with_max_tokens_over_the_window_is_a_422_and_stores_nothing(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    resp = await service.client.post(
        "/jobs",
        json={"agents": [{"id": "writer", "task": "Write a novel.", "max_tokens": 500_000}]},
    )
    assert resp.status_code == 422, resp.text
    [problem] = resp.json()["detail"]
    assert problem["loc"] == ["body", "agents", 0, "max_tokens"]
    assert "agent 'writer'" in problem["msg"]
    assert "max_tokens 500,000" in problem["msg"]
    assert "262,144-token context window of model 'kimi-k2.5'" in problem["msg"]
    assert (await service.client.get("/jobs")).json()["data"] == []
    assert fake_upstream.calls == []


async def test_a_run_time_refusal_names_the_upstreams_own_limit(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    """The registry says 262,144 for kimi-k2.5; an upstream that serves it with 131,072 is
    named as the limit that was hit, with both figures."""

    def refuse(body: dict[str, Any], _n: int) -> httpx2.Response:
        asked = body["max_tokens"] + 20
        message = (
            "This model's maximum context length is 131072 tokens. However, you requested "
            f"{asked} tokens (20 in the messages, {body['max_tokens']} in the completion)."
        )
        return httpx2.Response(
            400, json={"error": {"message": message, "code": "context_length_exceeded"}}
        )

    fake_upstream.script = refuse
    job = await service.submit({"agents": [{"id": "a", "task": "hi", "max_tokens": 200_000}]})
    assert (await service.wait(job["id"]))["status"] == "failed"
    agent = (await service.client.get(f"/jobs/{job['id']}/agents/a")).json()
    assert agent["attempts"] == 1
    error = agent["last_error"]
    assert "agent 'a'" in error and "plus max_tokens 200,000" in error
    assert "over the upstream's own limit of 131,072 tokens, not the registry's" in error
    assert "262,144" in error
