"""Structured output in-process, the upstream faked at the transport: the schema sent in
the form the model's upstream takes, answers validated, an invalid one asked again with
its errors shown, tokens of every answer counted, and fields of a JSON answer used
downstream."""

from __future__ import annotations

import json
from typing import Any

import httpx2

from tests.helpers.service import FakeUpstream, Service, completion_body

SCHEMA = {
    "type": "object",
    "properties": {
        "sentiment": {"enum": ["positive", "negative", "neutral"]},
        "score": {"type": "integer", "minimum": 0, "maximum": 10},
        "parties": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["sentiment", "score"],
    "additionalProperties": False,
}
GOOD = {"sentiment": "positive", "score": 7, "parties": ["Acme", "Globex"]}


def answering(*answers: str) -> Any:
    """A script answering the classify agent's calls with `answers` in turn (the last one
    again after that); other agents get the default answer."""
    seen: list[int] = []

    def script(body: dict[str, Any], _n: int) -> httpx2.Response | None:
        first_user = next(m["content"] for m in body["messages"] if m["role"] == "user")
        if "Classify" not in first_user:
            return None
        seen.append(1)
        content = answers[min(len(seen), len(answers)) - 1]
        return httpx2.Response(200, json=completion_body(content, prompt_tokens=100))

    return script


def job(model: str = "gpt-4.1", **agent: Any) -> dict[str, Any]:
    return {
        "model": model,
        "max_retries": 2,
        "agents": [
            {
                "id": "classify",
                "task": "Classify this letter.",
                "response_format": {"type": "json_schema", "schema": SCHEMA},
                **agent,
            }
        ],
    }


async def test_a_strict_schema_upstream_gets_the_schema_as_response_format(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script = answering(json.dumps(GOOD))
    body = job(
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "letter", "schema": SCHEMA, "strict": True},
        }
    )
    done = await service.wait((await service.submit(body))["id"])
    assert done["status"] == "completed", done
    sent = fake_upstream.calls[0]
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "letter", "schema": SCHEMA, "strict": True},
    }
    assert [m["role"] for m in sent["messages"]] == ["user"]


async def test_an_upstream_without_strict_schemas_gets_json_mode_and_the_schema_told(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script = answering(json.dumps(GOOD))
    body = job(model="deepseek-v3.2", system_prompt="You read letters.")
    done = await service.wait((await service.submit(body))["id"])
    assert done["status"] == "completed", done
    sent = fake_upstream.calls[0]
    assert sent["response_format"] == {"type": "json_object"}
    system = sent["messages"][0]
    assert system["role"] == "system" and system["content"].startswith("You read letters.\n\n")
    assert json.dumps(SCHEMA, separators=(",", ":")) in system["content"]
    agent = (await service.client.get(f"/jobs/{done['id']}/agents/classify")).json()
    assert agent["system_prompt"] == system["content"]  # what was sent, as stored


async def test_an_invalid_answer_is_asked_again_with_its_errors(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    bad = json.dumps({"sentiment": "happy", "score": 7})
    fake_upstream.script = answering(bad, json.dumps(GOOD))
    done = await service.wait((await service.submit(job()))["id"])
    assert done["status"] == "completed", done
    assert len(fake_upstream.calls) == 2
    repair = fake_upstream.calls[1]["messages"]
    assert [m["role"] for m in repair] == ["user", "assistant", "user"]
    assert repair[1]["content"] == bad
    assert "at $ .sentiment: 'happy' is not one of" in repair[2]["content"]
    agent = (await service.client.get(f"/jobs/{done['id']}/agents/classify")).json()
    assert json.loads(agent["output"]) == GOOD
    assert agent["attempts"] == 2
    assert [r["reason"] for r in agent["retries"]] == ["invalid_output"]
    assert "'happy' is not one of" in agent["retries"][0]["error"]
    # Both answers were paid for: the invalid one's tokens stay counted.
    assert agent["usage"]["prompt_tokens"] == 200
    assert done["cost_usd"] == agent["cost_usd"] > 0


async def test_out_of_retries_the_agent_fails_showing_what_came_back_and_why(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script = answering("I think it is positive, 7/10.")
    done = await service.wait((await service.submit(job(max_retries=1)))["id"])
    assert done["status"] == "failed"
    assert len(fake_upstream.calls) == 2
    agent = (await service.client.get(f"/jobs/{done['id']}/agents/classify")).json()
    assert agent["status"] == "failed"
    assert "the answer is not JSON" in agent["last_error"]
    assert "It answered: I think it is positive, 7/10." in agent["last_error"]
    assert agent["usage"]["prompt_tokens"] == 200


async def test_fields_of_a_json_answer_are_used_downstream(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script = answering(json.dumps(GOOD))
    body = job()
    body["agents"].append(
        {
            "id": "reply",
            "depends_on": ["classify"],
            "task": "Reply in a {{agents.classify.output.sentiment}} tone (score "
            "{{agents.classify.output.score}}) to {{agents.classify.output.parties.1}}; "
            "all: {{agents.classify.output.parties}}",
        }
    )
    done = await service.wait((await service.submit(body))["id"])
    assert done["status"] == "completed", done
    prompt = fake_upstream.user_prompt(fake_upstream.calls[-1])
    assert prompt == 'Reply in a positive tone (score 7) to Globex; all: ["Acme", "Globex"]'


async def test_a_field_absent_from_an_answer_renders_as_a_note(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script = answering(json.dumps({"sentiment": "neutral", "score": 1}))
    body = job()
    body["agents"].append(
        {
            "id": "reply",
            "depends_on": ["classify"],
            "task": "Write to {{agents.classify.output.parties.0}}",
        }
    )
    done = await service.wait((await service.submit(body))["id"])
    prompt = fake_upstream.user_prompt(fake_upstream.calls[-1])
    assert done["status"] == "completed"
    assert (
        prompt == "Write to [agents.classify.output.parties.0: the output has no value at parties]"
    )


async def test_bad_schemas_and_fields_are_422s_naming_the_problem(service: Service) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        (
            job(response_format={"type": "json_schema", "schema": {"type": "objekt"}}),
            "not a valid JSON Schema",
        ),
        (job(response_format={"type": "json_schema"}), "either as 'schema'"),
        (
            job(
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "bad name!", "schema": SCHEMA},
                }
            ),
            "name",
        ),
        (job(response_format="xml"), "Input should be 'text', 'json' or a JSON Schema"),
    ]
    for body, expected in cases:
        resp = await service.client.post("/jobs", json=body)
        assert resp.status_code == 422, resp.text
        assert expected in resp.text, resp.text

    def reading(task: str, source: dict[str, Any] | None = None) -> dict[str, Any]:
        body = job(**(source or {}))
        body["agents"].append({"id": "next", "depends_on": ["classify"], "task": task})
        return body

    resp = await service.client.post("/jobs", json=reading("{{agents.classify.output.mood}}"))
    assert resp.status_code == 422
    problem = resp.json()["detail"][0]
    assert problem["type"] == "template.unknown_output_field"
    assert "declares no field 'mood' (fields: parties, score, sentiment)" in problem["msg"]
    resp = await service.client.post(
        "/jobs", json=reading("{{agents.classify.output.score.value}}")
    )
    assert resp.status_code == 422
    assert "makes score of type integer, which has no fields" in resp.json()["detail"][0]["msg"]
    resp = await service.client.post(
        "/jobs",
        json=reading("{{agents.classify.output.sentiment}}", {"response_format": "text"}),
    )
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["type"] == "template.output_field_not_json"
    # JSON mode without a schema: any field may be read.
    resp = await service.client.post(
        "/jobs",
        json=reading("{{agents.classify.output.anything}}", {"response_format": "json"}),
    )
    assert resp.status_code == 201, resp.text


async def test_openai_objects_for_the_plain_formats_are_taken(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    body = {
        "agents": [
            {"id": "j", "task": "as json", "response_format": {"type": "json_object"}},
            {"id": "t", "task": "as text", "response_format": {"type": "text"}},
        ]
    }
    done = await service.wait((await service.submit(body))["id"])
    assert done["status"] == "completed"
    sent = {fake_upstream.user_prompt(c): c.get("response_format") for c in fake_upstream.calls}
    assert sent == {"as json": {"type": "json_object"}, "as text": None}
