"""HTTP details every route shares: HEAD, 405 with a true Allow, trailing slashes, cursors."""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers.service import Service

GET_PATHS = ["/jobs", "/healthz", "/readyz", "/metrics", "/openapi.json"]


@pytest.mark.parametrize("path", GET_PATHS)
async def test_head_answers_like_get_without_a_body(service: Service, path: str) -> None:
    get = await service.client.get(path)
    head = await service.client.head(path)
    assert (head.status_code, get.status_code) == (200, 200)
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    if path != "/metrics":  # the metrics text changes between two scrapes
        assert head.headers["content-length"] == str(len(get.content))


async def test_head_on_a_job_its_agents_and_its_event_stream(service: Service) -> None:
    job = await service.submit({"agents": [{"id": "a", "task": "x"}]})
    await service.wait(job["id"])
    for path in (f"/jobs/{job['id']}", f"/jobs/{job['id']}/agents/a", f"/jobs/{job['id']}/results"):
        resp = await service.client.head(path)
        assert (resp.status_code, resp.content) == (200, b""), path
    # The stream of a finished job answers its headers and ends, with no body.
    async with asyncio.timeout(5):
        resp = await service.client.head(f"/jobs/{job['id']}/events")
    assert resp.status_code == 200 and resp.content == b""
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert (await service.client.head("/jobs/01m8nope")).status_code == 404


async def test_head_on_a_running_jobs_event_stream_does_not_hang(service: Service) -> None:
    await_forever = {"agents": [{"id": "a", "task": "x"}]}
    job = await service.submit(await_forever)
    async with asyncio.timeout(5):
        resp = await service.client.head(f"/jobs/{job['id']}/events")
    assert resp.status_code == 200 and resp.content == b""


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/jobs", "GET, HEAD, POST"),
        ("DELETE", "/jobs", "GET, HEAD, POST"),
        ("POST", "/healthz", "GET, HEAD"),
        ("PATCH", "/jobs/01m8nope", "DELETE, GET, HEAD"),
        ("GET", "/jobs/01m8nope/cancel", "POST"),
        ("HEAD", "/jobs/01m8nope/cancel", "POST"),
    ],
)
async def test_405_names_the_methods_the_path_allows(
    service: Service, method: str, path: str, allow: str
) -> None:
    resp = await service.client.request(method, path)
    assert resp.status_code == 405
    assert resp.headers["allow"] == allow


async def test_a_trailing_slash_is_served_as_the_path_without_it(service: Service) -> None:
    resp = await service.client.post("/jobs/", json={"agents": [{"id": "a", "task": "x"}]})
    assert resp.status_code == 201, resp.text
    job_id = resp.json()["id"]
    assert (await service.client.get("/jobs/")).json()["data"][0]["id"] == job_id
    assert (await service.client.get(f"/jobs/{job_id}/")).json()["id"] == job_id
    # Never an empty redirect; a path that names nothing, slash or not, is a 404 with a body.
    resp = await service.client.post("/nothing/", json={})
    assert resp.status_code == 404 and resp.json()["detail"]


@pytest.mark.parametrize("cursor", ["garbage", "0" * 25, "i" * 26, "01M8SV36SV8D1BK88BYDEPK7W7"])
async def test_a_cursor_that_is_no_cursor_is_a_422_naming_it(service: Service, cursor: str) -> None:
    resp = await service.client.get("/jobs", params={"cursor": cursor})
    assert resp.status_code == 422
    (problem,) = resp.json()["detail"]
    assert problem["loc"] == ["query", "cursor"]
    assert problem["msg"].startswith(f"{cursor!r} is not allowed: a cursor is the next_cursor")


async def test_a_real_cursor_pages_through(service: Service) -> None:
    for _ in range(3):
        await service.submit({"agents": [{"id": "a", "task": "x"}]})
    first = (await service.client.get("/jobs", params={"limit": 2})).json()
    rest = (
        await service.client.get("/jobs", params={"limit": 2, "cursor": first["next_cursor"]})
    ).json()
    assert len(first["data"]) == 2 and len(rest["data"]) == 1 and rest["next_cursor"] is None
