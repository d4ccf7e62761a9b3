"""SwarmClient against a fake service at the transport: the event stream's reconnects
(Last-Event-ID, drops, clean closes, 5xx while restarting, 404, giving up) and errors."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import pytest

from app.cli import client as client_module
from app.cli.client import CliError, SwarmClient

Handler = Callable[[httpx2.Request, int], httpx2.Response]


def sse(*seqs: int, terminal: bool = False, drop: bool = False) -> httpx2.Response:
    """An event stream with these seqs (the last one `job.completed` if terminal), that
    may end with the connection dropping."""

    def body() -> Iterator[bytes]:
        yield b": ping\n\n"
        for seq in seqs:
            kind = "job.completed" if terminal and seq == seqs[-1] else "agent.started"
            data = json.dumps({"seq": seq, "type": kind, "job_id": "j", "agent_id": "a"})
            yield f"id: {seq}\nevent: {kind}\ndata: {data}\n\n".encode()
        if drop:
            raise httpx2.ReadError("connection reset by peer")

    return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body())


class Fake:
    def __init__(self, *answers: httpx2.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def last_event_ids(self) -> list[str | None]:
        return [r.headers.get("last-event-id") for r in self.requests]


def follow(fake: Fake, **kwargs: Any) -> tuple[list[int], list[tuple[str, int]], list[float]]:
    drops: list[tuple[str, int]] = []
    sleeps: list[float] = []
    client = SwarmClient("127.0.0.1:8000", transport=httpx2.MockTransport(fake))
    seqs = [
        e.seq
        for e in client.events(
            "j",
            on_drop=lambda reason, last: drops.append((reason, last)),
            sleep=sleeps.append,
            **kwargs,
        )
    ]
    return seqs, drops, sleeps


def test_a_dropped_stream_resumes_after_the_last_event() -> None:
    fake = Fake(sse(1, 2, 3, drop=True), sse(4, 5, terminal=True))
    seqs, drops, sleeps = follow(fake)
    assert seqs == [1, 2, 3, 4, 5]
    assert fake.last_event_ids() == [None, "3"]
    assert drops == [("the connection dropped", 3)]
    assert sleeps == [client_module.RECONNECT_FIRST_S]


def test_a_stream_closed_early_is_reopened_and_after_is_honoured() -> None:
    fake = Fake(sse(8, 9), sse(10, terminal=True))
    seqs, drops, _ = follow(fake, after=7)
    assert seqs == [8, 9, 10]
    assert fake.last_event_ids() == ["7", "9"]
    assert drops == [("the service closed the stream", 9)]


def test_a_restarting_service_is_waited_for_with_growing_pauses() -> None:
    fake = Fake(
        sse(1, drop=True),
        httpx2.ConnectError("refused"),
        httpx2.Response(503, json={"detail": "starting"}),
        httpx2.ConnectError("refused"),
        sse(2, terminal=True),
    )
    resumed: list[int] = []
    client = SwarmClient("http://svc", transport=httpx2.MockTransport(fake))
    sleeps: list[float] = []
    seqs = [e.seq for e in client.events("j", on_resume=resumed.append, sleep=sleeps.append)]
    assert seqs == [1, 2]
    assert fake.last_event_ids() == [None, "1", "1", "1", "1"]
    assert sleeps == [0.25, 0.5, 1.0, 1.0]  # back within a second of a restart
    assert resumed == [1]


def test_the_first_connection_is_not_retried() -> None:
    fake = Fake(httpx2.ConnectError("refused"))
    with pytest.raises(CliError) as caught:
        follow(fake)
    assert caught.value.message == (
        "cannot reach the service at http://127.0.0.1:8000: is it running? (make run)"
    )


def test_a_job_deleted_while_away_ends_the_stream_with_the_404() -> None:
    fake = Fake(sse(1, drop=True), httpx2.Response(404, json={"detail": "job not found"}))
    with pytest.raises(CliError) as caught:
        follow(fake)
    assert caught.value.message == "job j (404 not found): job not found"


def test_it_gives_up_after_a_long_absence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "RECONNECT_GIVE_UP_S", -1.0)
    fake = Fake(sse(1, 2, drop=True), httpx2.ConnectError("refused"))
    with pytest.raises(CliError) as caught:
        follow(fake)
    assert "could not reconnect to http://127.0.0.1:8000" in caught.value.message
    assert "(last event 2)" in caught.value.message
    assert "swarmctl watch j" in caught.value.message


def test_api_key_is_sent_as_a_bearer_token_only_when_set() -> None:
    seen: list[str | None] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request.headers.get("authorization"))
        return httpx2.Response(200, json={"data": [], "next_cursor": None})

    transport = httpx2.MockTransport(handler)
    SwarmClient("http://svc", "swarm_secret", transport=transport).jobs()
    SwarmClient("http://svc", None, transport=transport).jobs()
    SwarmClient("http://svc", "", transport=transport).jobs()
    assert seen == ["Bearer swarm_secret", None, None]


def test_answers_that_are_not_the_service() -> None:
    def html(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, text="<html>hello</html>")

    client = SwarmClient("http://svc", transport=httpx2.MockTransport(html))
    with pytest.raises(CliError, match="not JSON: is SWARM_URL the swarm service"):
        client.jobs()

    def bad_gateway(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(502, text="<html>Bad Gateway</html>")

    client = SwarmClient("http://svc", transport=httpx2.MockTransport(bad_gateway))
    with pytest.raises(CliError) as caught:
        client.job("j")
    assert caught.value.message == "job j (502 bad gateway): <html>Bad Gateway</html>"

    with pytest.raises(CliError, match="not a valid http"):
        SwarmClient("ftp://svc").jobs()


def test_a_service_that_hangs_up_at_once_is_not_hammered() -> None:
    fake = Fake(sse(1), sse(), sse(), sse(2, terminal=True))
    seqs, drops, sleeps = follow(fake)
    assert seqs == [1, 2]
    assert sleeps == [0.25, 0.5, 1.0]  # empty streams do not reset the back-off
    assert [d[1] for d in drops] == [1, 1, 1]


def stream_of(*kinds: str) -> httpx2.Response:
    """A stream of these event types, seq 1, 2, …, closed by the service after the last."""

    def body() -> Iterator[bytes]:
        for seq, kind in enumerate(kinds, 1):
            data = json.dumps({"seq": seq, "type": kind, "job_id": "j"})
            yield f"id: {seq}\nevent: {kind}\ndata: {data}\n\n".encode()

    return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body())


def test_watching_a_retried_job_follows_the_retried_run_to_its_end() -> None:
    fake = Fake(
        stream_of("job.started", "job.failed", "job.retried", "job.started", "job.completed")
    )
    seqs, drops, _ = follow(fake)
    assert seqs == [1, 2, 3, 4, 5]  # not stopped at the first run's job.failed
    assert drops == []


def test_a_stream_dropped_after_the_terminal_event_ends_on_the_next_close() -> None:
    fake = Fake(sse(1, 2, terminal=True, drop=True), sse())
    seqs, drops, _ = follow(fake)
    assert seqs == [1, 2]
    assert fake.last_event_ids() == [None, "2"]
    assert drops == [("the connection dropped", 2)]


def test_a_big_jobs_agents_are_fetched_page_by_page_to_the_end() -> None:
    """`swarmctl status` lists every agent: the first ones come with the job, the rest
    from `GET /jobs/{id}/agents` following the cursors."""
    agents = [{"id": f"a{i}", "status": "completed"} for i in range(2500)]
    asked: list[tuple[str, dict[str, str]]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        params = dict(request.url.params)
        asked.append((request.url.path, params))
        size = int(params.get("agents_limit") or params.get("limit") or 200)
        start = int(params.get("cursor", "0"))
        page = agents[start : start + size]
        more = str(start + size) if start + size < len(agents) else None
        if request.url.path == "/jobs/j":
            return httpx2.Response(
                200, json={"id": "j", "agents": page, "agents_next_cursor": more}
            )
        return httpx2.Response(200, json={"data": page, "next_cursor": more})

    client = SwarmClient("http://svc", transport=httpx2.MockTransport(handler))
    job = client.job("j")
    assert [a["id"] for a in job["agents"]] == [a["id"] for a in agents]
    assert job["agents_next_cursor"] is None
    assert [path for path, _ in asked] == ["/jobs/j", "/jobs/j/agents", "/jobs/j/agents"]
    assert asked[2][1]["cursor"] == "2000"
    asked.clear()
    assert client.job("j", agents=False)["id"] == "j"
    assert asked == [("/jobs/j", {"agents": "false"})]
