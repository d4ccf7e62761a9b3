"""Bad input from a client gets a clear 4xx naming the problem, never a 500."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx2
import pytest

from tests.helpers.service import FakeUpstream, Service, completion_body


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"metadata": {"\ud800": 1}}, ["body", "metadata"]),
        ({"context": {"\udfff": "v"}}, ["body", "context"]),
        ({"context": {"doc": {"ok": {"\ud800x": 1}}}}, ["body", "context"]),
        ({"metadata": {"k": [{"\ud800": 1}]}}, ["body", "metadata"]),
    ],
)
async def test_a_lone_surrogate_in_a_key_is_a_clear_422(
    service: Service, body: dict[str, object], loc: list[str]
) -> None:
    raw = json.dumps({**body, "agents": [{"id": "a", "task": "x"}]}, ensure_ascii=True)
    resp = await service.client.post(
        "/jobs", content=raw.encode(), headers={"content-type": "application/json"}
    )
    assert resp.status_code == 422, resp.text
    problem = resp.json()["detail"][0]
    assert problem["loc"][:2] == loc
    assert problem["type"] == "unencodable" and "surrogate" in problem["msg"]
    assert (await service.client.get("/jobs")).json()["data"] == []


BODY = json.dumps({"agents": [{"id": "a", "task": "x"}]}).encode()


async def _post(service: Service, content: bytes, headers: dict[str, str]) -> dict[str, Any]:
    resp = await service.client.post("/jobs", content=content, headers=headers)
    assert resp.status_code == 422, resp.text
    detail: list[dict[str, Any]] = resp.json()["detail"]
    return detail[0] if len(detail) == 1 else {"all": detail}


async def test_a_body_not_sent_as_json_says_so(service: Service) -> None:
    for headers, sent in [
        ({}, "no Content-Type was sent"),
        ({"content-type": "application/x-www-form-urlencoded"}, "it was sent as 'application/"),
        ({"content-type": "text/plain"}, "it was sent as 'text/plain'"),
    ]:
        problem = await _post(service, BODY, headers)
        assert problem["type"] == "content_type"
        assert problem["msg"].startswith(
            "the body must be JSON, sent with Content-Type: application/json ("
        )
        assert sent in problem["msg"]
    # JSON of the wrong shape, and no body at all, are said plainly too.
    problem = await _post(service, b"[1, 2]", {"content-type": "application/json"})
    assert problem["msg"] == "the body must be a JSON object, not an array"
    problem = await _post(service, b"", {"content-type": "application/json"})
    assert "no body" in problem["msg"]
    assert (await service.client.get("/jobs")).json()["data"] == []


async def test_invalid_json_gives_the_reason_line_and_column(service: Service) -> None:
    raw = b'{"agents": [\n  {"id": "a",, "task": "x"}]}'
    problem = await _post(service, raw, {"content-type": "application/json"})
    assert problem == {
        "loc": ["body"],
        "msg": "the body is not valid JSON: Expecting property name enclosed in double quotes "
        "at line 2, column 14",
        "type": "json_invalid",
    }


async def test_an_unknown_field_suggests_the_nearest_known_one(service: Service) -> None:
    body = {"nmae": "n", "agents": [{"id": "a", "task": "x", "depend_on": []}]}
    resp = await service.client.post("/jobs", json=body)
    assert resp.status_code == 422
    by_loc = {tuple(p["loc"]): p["msg"] for p in resp.json()["detail"]}
    assert by_loc == {
        ("body", "agents", 0, "depend_on"): "unknown field 'depend_on'; did you mean 'depends_on'?",
        ("body", "nmae"): "unknown field 'nmae'; did you mean 'name'?",
    }
    # Inside a map node, the map's own fields are the candidates; with none close, listed.
    body = {"agents": [{"id": "a", "task": "x", "map": {"over": "context.d", "max_item": 1}}]}
    (problem,) = (await service.client.post("/jobs", json=body)).json()["detail"]
    assert problem["msg"] == "unknown field 'max_item'; did you mean 'max_items'?"
    body = {"agents": [{"id": "a", "task": "x", "map": {"over": "context.d", "zzz": 1}}]}
    (problem,) = (await service.client.post("/jobs", json=body)).json()["detail"]
    assert problem["msg"] == (
        "unknown field 'zzz'; the fields here are over, chunk_tokens, overlap_tokens, max_items"
    )


async def test_an_invalid_agent_id_says_which_characters_are_allowed(service: Service) -> None:
    resp = await service.client.post("/jobs", json={"agents": [{"id": "my agent", "task": "x"}]})
    assert resp.status_code == 422
    (problem,) = resp.json()["detail"]
    assert problem["loc"] == ["body", "agents", 0, "id"]
    assert problem["msg"] == (
        "'my agent' is not allowed: an agent id is 1 to 64 characters, each a letter "
        "(A-Z, a-z), a digit, '_', '.' or '-' (no spaces)"
    )
    assert "^[" not in problem["msg"]


async def test_costs_are_given_to_a_billionth_of_a_dollar(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    # 1 prompt and 1 completion token of kimi-k2.5 cost 3.6000000000000003e-06 in floats.
    fake_upstream.script = lambda _body, _n: httpx2.Response(
        200, json=completion_body("ok", prompt_tokens=1, completion_tokens=1)
    )
    job = await service.submit({"agents": [{"id": f"a{i}", "task": "x"} for i in range(3)]})
    await service.wait(job["id"])
    texts = [
        (await service.client.get(path)).text
        for path in (
            f"/jobs/{job['id']}",
            f"/jobs/{job['id']}/metrics",
            f"/jobs/{job['id']}/agents/a0",
        )
    ]
    figures = [m for t in texts for m in re.findall(r'"cost_usd":\s*([-0-9.e+]+)', t)]
    assert len(figures) >= 5
    assert {float(f) for f in figures} == {3.6e-06, 1.08e-05}
    assert all(len(f) <= 9 for f in figures), figures  # no …00000000000003 tail
