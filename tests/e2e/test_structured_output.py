"""Structured output against the real service and simulator: an answer that does not
match the schema is repaired on the second attempt (the simulator answers the first one
invalidly on purpose), and a field of the answer feeds the next agent."""

from __future__ import annotations

import json
from pathlib import Path

import httpx2
import jsonschema
import pytest

from tests.helpers.e2e import agent, sim_requests
from tests.helpers.processes import start_service, start_simulator, wait_job

pytestmark = pytest.mark.e2e

SCHEMA = {
    "type": "object",
    "properties": {
        "kind": {"enum": ["invoice", "contract", "email"]},
        "parties": {"type": "array", "items": {"type": "string"}, "minItems": 1},
    },
    "required": ["kind", "parties"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("model", ["kimi-k2.5", "gpt-4.1"])  # JSON mode, strict schema
def test_a_schema_is_repaired_on_the_second_attempt(tmp_path: Path, model: str) -> None:
    sim = start_simulator(tmp_path, "--latency-uniform-ms", "1,5", "--seed", "11")
    try:
        svc = start_service(tmp_path, {"SWARM_UPSTREAM_BASE_URL": sim.url + "/v1"})
        with httpx2.Client(base_url=svc.url, timeout=30) as client:
            body = {
                "model": model,
                "agents": [
                    {
                        "id": "classify",
                        "task": "Classify the document. [sim:invalid-once]",
                        "response_format": {"type": "json_schema", "schema": SCHEMA},
                    },
                    {
                        "id": "route",
                        "depends_on": ["classify"],
                        "task": "Route this {{agents.classify.output.kind}} to "
                        "{{agents.classify.output.parties.0}}.",
                    },
                ],
            }
            resp = client.post("/jobs", json=body)
            assert resp.status_code == 201, resp.text
            job = wait_job(client, resp.json()["id"], timeout=60)
            assert job["status"] == "completed", job
            classify = agent(client, job["id"], "classify")
            answer = json.loads(classify["output"])
            jsonschema.validate(answer, SCHEMA)
            assert classify["attempts"] == 2
            assert [r["reason"] for r in classify["retries"]] == ["invalid_output"]
            assert "'kind' is a required property" in classify["retries"][0]["error"]

            calls = sim_requests(sim)
            assert len(calls) == 3
            first, repair, route = calls
            sent_format = first["response_format"]
            if model == "gpt-4.1":
                assert sent_format["json_schema"]["schema"] == SCHEMA
            else:
                assert sent_format == {"type": "json_object"}
            assert [m["role"] for m in repair["messages"]][-2:] == ["assistant", "user"]
            assert "'kind' is a required property" in repair["messages"][-1]["content"]
            expected = f"Route this {answer['kind']} to {answer['parties'][0]}."
            assert route["messages"][-1]["content"] == expected
        svc.stop()
    finally:
        sim.stop()
