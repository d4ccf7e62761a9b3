"""Bad input from a client gets a clear 4xx naming the problem, never a 500."""

from __future__ import annotations

import json

import pytest

from tests.conftest import Service


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
