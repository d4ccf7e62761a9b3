"""The service's HTTP API as plain method calls, with every failure turned into a message a
person can act on (`CliError`), and the job's event stream followed across reconnects.

The stream is read with httpx2's own Server-Sent Events support (`Client.sse`, derived from
httpx-sse): httpx2 is the project's HTTP client already, so the CLI needs no second HTTP
stack (httpx + httpx-sse) and no hand-written parser; the resume logic is ours."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx2

from app.events.types import TERMINAL_JOB_EVENTS

DEFAULT_URL = "http://127.0.0.1:8000"
USER_AGENT = "swarmctl/0.1"

# Plain requests: the service answers in milliseconds; /upstream waits for each upstream's
# check (SWARM_UPSTREAM_CHECK_TIMEOUT_S, 10 s by default), so reads get more than that.
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0
# The event stream sends a `: ping` every SWARM_SSE_HEARTBEAT_S (15 s by default); a stream
# silent for this long is dead even if no socket error says so, and is reopened.
STREAM_READ_TIMEOUT_S = 60.0
# Reconnecting after a drop: the first wait doubles up to a second while the service is
# away for less than RECONNECT_PATIENT_S (a restart takes seconds: be back within one),
# then up to RECONNECT_CAP_S; after RECONNECT_GIVE_UP_S (a container rollout takes a minute
# or two) the client gives up.
RECONNECT_FIRST_S = 0.25
RECONNECT_SOON_CAP_S = 1.0
RECONNECT_PATIENT_S = 30.0
RECONNECT_CAP_S = 5.0
RECONNECT_GIVE_UP_S = 300.0
# Agents asked for per request when a whole job is listed (the most the service gives).
AGENTS_PAGE = 1000
# A stream that closes sooner than this without a new event does not reset the back-off
# (a service that accepts and hangs up at once must not be hammered forever).
HEALTHY_STREAM_S = 10.0


class CliError(Exception):
    """A failure to show the user as one plain message (no traceback); exit code 2."""

    def __init__(self, message: str, *, exit_code: int = 2) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class ApiError(CliError):
    """The service answered with an error status."""

    def __init__(self, status: int, detail: Any, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


_STATUS_WORDS = {
    400: "bad request",
    401: "not authorised (check SWARM_API_KEY)",
    403: "forbidden (the API key lacks access)",
    404: "not found",
    409: "conflict",
    413: "too large",
    422: "invalid",
    429: "too many requests",
    500: "service error",
    502: "bad gateway",
    503: "service unavailable",
    504: "gateway time-out",
}


def format_loc(loc: Sequence[Any], agent_ids: Sequence[str] | None = None) -> str:
    """`["body", "agents", 2, "depends_on"]` → `agents[2] (summary).depends_on`."""
    parts: list[str] = []
    items = list(loc)
    if items and items[0] == "body":
        items = items[1:]
    for i, item in enumerate(items):
        if isinstance(item, int):
            text = f"[{item}]"
            if agent_ids and i > 0 and items[i - 1] == "agents" and 0 <= item < len(agent_ids):
                text += f" ({agent_ids[item]})"
            if parts:
                parts[-1] += text
            else:
                parts.append(text)
        else:
            parts.append(str(item))
    return ".".join(parts) or "body"


def detail_lines(detail: Any, agent_ids: Sequence[str] | None = None) -> list[str]:
    """The service's `detail` (a string, or FastAPI's list of {loc, msg, type}) as lines."""
    if isinstance(detail, list):
        lines = []
        for item in detail:
            if isinstance(item, dict) and "msg" in item:
                loc = item.get("loc")
                where = format_loc(loc, agent_ids) if isinstance(loc, list) and loc else ""
                lines.append(f"{where}: {item['msg']}" if where else str(item["msg"]))
            else:
                lines.append(str(item))
        return lines
    if isinstance(detail, str):
        return [detail]
    return [json.dumps(detail, ensure_ascii=False)]


def api_error(
    response: httpx2.Response, *, what: str | None = None, agent_ids: Sequence[str] | None = None
) -> ApiError:
    status = response.status_code
    try:
        body = response.json()
        detail = body.get("detail", body) if isinstance(body, dict) else body
    except ValueError:
        text = response.text.strip()
        detail = text[:300] or "(empty body)"
    words = _STATUS_WORDS.get(status, "error")
    head = f"{what} ({status} {words})" if what else f"{status} {words}"
    lines = detail_lines(detail, agent_ids)
    if len(lines) == 1 and len(lines[0]) < 100 and "\n" not in lines[0]:
        message = f"{head}: {lines[0]}"
    else:
        message = head + ":\n" + "\n".join(f"  {line}" for line in lines)
    return ApiError(status, detail, message)


@dataclass(frozen=True)
class Event:
    """One event of a job's stream: its `seq` (the SSE id), type and JSON payload."""

    seq: int
    type: str
    data: dict[str, Any] = field(default_factory=dict)
    raw: str = ""  # the `data:` field as received

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_JOB_EVENTS


def normalise_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    return url


class SwarmClient:
    """A synchronous client of one service. Every method raises `CliError` on failure."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        transport: httpx2.BaseTransport | None = None,
    ) -> None:
        self.url = normalise_url(url or DEFAULT_URL)
        headers = {"User-Agent": USER_AGENT}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        try:
            self._http = httpx2.Client(
                base_url=self.url,
                headers=headers,
                timeout=httpx2.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
                transport=transport,
            )
        except (httpx2.InvalidURL, ValueError) as exc:
            raise CliError(f"SWARM_URL is not a valid URL ({self.url}): {exc}") from None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SwarmClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- errors -----------------------------------------------------------------------

    def unreachable(self, exc: Exception) -> CliError:
        if isinstance(exc, httpx2.ConnectError):
            return CliError(f"cannot reach the service at {self.url}: is it running? (make run)")
        if isinstance(exc, httpx2.TimeoutException):
            return CliError(f"the service at {self.url} did not answer in time ({exc!s})")
        if isinstance(exc, httpx2.UnsupportedProtocol | httpx2.InvalidURL):
            return CliError(f"SWARM_URL is not a valid http(s) URL: {self.url}")
        return CliError(f"lost the connection to the service at {self.url}: {exc!s}")

    def _send(
        self,
        method: str,
        path: str,
        *,
        what: str | None = None,
        agent_ids: Sequence[str] | None = None,
        ok: tuple[int, ...] = (200,),
        **kwargs: Any,
    ) -> httpx2.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx2.TransportError as exc:
            raise self.unreachable(exc) from None
        if response.status_code not in ok:
            raise api_error(response, what=what, agent_ids=agent_ids)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise CliError(
                f"the service at {self.url} answered {method} {path} with something that is "
                "not JSON: is SWARM_URL the swarm service?"
            ) from None

    # -- the API ----------------------------------------------------------------------

    def submit(
        self,
        body: bytes,
        *,
        idempotency_key: str | None = None,
        agent_ids: Sequence[str] | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """POST /jobs; returns the job and whether it was created (False: an earlier job
        with the same Idempotency-Key and body)."""
        headers = {"Content-Type": "application/json"}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        response = self._send(
            "POST",
            "/jobs",
            content=body,
            headers=headers,
            what="the service refused the job",
            agent_ids=agent_ids,
            ok=(200, 201),
        )
        job: dict[str, Any] = response.json()
        return job, response.status_code == 201

    def job(self, job_id: str, *, agents: bool = True) -> dict[str, Any]:
        """The job; with `agents`, every one of its agents (the service lists the first
        ones with the job and the rest a page at a time)."""
        params = {"agents_limit": str(AGENTS_PAGE)} if agents else {"agents": "false"}
        result: dict[str, Any] = self._json(
            "GET", f"/jobs/{job_id}", params=params, what=f"job {job_id}"
        )
        cursor = result.get("agents_next_cursor")
        while agents and cursor:
            page: dict[str, Any] = self._json(
                "GET",
                f"/jobs/{job_id}/agents",
                params={"cursor": str(cursor), "limit": str(AGENTS_PAGE)},
                what=f"job {job_id}",
            )
            result["agents"].extend(page.get("data") or [])
            cursor = page.get("next_cursor")
        result["agents_next_cursor"] = None
        return result

    def results(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", f"/jobs/{job_id}/results", what=f"job {job_id}")
        return result

    def agent(self, job_id: str, agent_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json(
            "GET", f"/jobs/{job_id}/agents/{agent_id}", what=f"agent {agent_id} of job {job_id}"
        )
        return result

    def metrics(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", f"/jobs/{job_id}/metrics", what=f"job {job_id}")
        return result

    def retry(
        self, job_id: str, *, budget_usd: float | None = None, max_retries: int | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if budget_usd is not None:
            body["budget_usd"] = budget_usd
        if max_retries is not None:
            body["max_retries"] = max_retries
        result: dict[str, Any] = self._json(
            "POST",
            f"/jobs/{job_id}/retry",
            json=body,
            what=f"cannot retry job {job_id}",
            ok=(202,),
        )
        return result

    def cancel(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json(
            "POST", f"/jobs/{job_id}/cancel", what=f"cannot cancel job {job_id}", ok=(202,)
        )
        return result

    def jobs(
        self, *, status: str | None = None, limit: int = 20, cursor: str | None = None
    ) -> dict[str, Any]:
        params: dict[str, str | int] = {"limit": limit}
        if status:
            params["status"] = status
        if cursor:
            params["cursor"] = cursor
        result: dict[str, Any] = self._json("GET", "/jobs", params=params, what="list")
        return result

    def upstream(self) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", "/upstream", what="upstream check")
        return result

    # -- the event stream -------------------------------------------------------------

    def events(
        self,
        job_id: str,
        *,
        after: int = 0,
        run_from: int = 0,
        on_drop: Callable[[str, int], None] | None = None,
        on_resume: Callable[[int], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Iterator[Event]:
        """The job's events after `after`, until the service closes the stream after a
        terminal one (after seq `run_from`): a retried job's stream holds the earlier runs'
        terminal events too, each followed by its `job.retried`.

        When the connection drops (or the service closes the stream early: a restart, its
        lifetime cap, a slow reader cut off), it reconnects with `Last-Event-ID` set to the
        last event received, so nothing is missed or repeated. `on_drop(reason, last_seq)`
        and `on_resume(last_seq)` report it. The first connection is not retried: an
        unreachable service is an error at once. A 404 on a reconnect (the job was
        deleted) or an absence longer than RECONNECT_GIVE_UP_S ends with `CliError`.
        """
        last = after
        ended = False
        connected_once = False
        dropped = False
        failing_since: float | None = None
        attempt = 0
        timeout = httpx2.Timeout(
            CONNECT_TIMEOUT_S, read=STREAM_READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S
        )
        while True:
            headers = {"Last-Event-ID": str(last)} if last else {}
            reason: str
            try:
                with self._http.sse(
                    f"/jobs/{job_id}/events", headers=headers, timeout=timeout
                ) as source:
                    response = source.response
                    if response.status_code != 200:
                        response.read()
                        error = api_error(response, what=f"job {job_id}")
                        if not connected_once or response.status_code < 500:
                            raise error
                        raise _Unavailable(error.message)
                    if dropped and on_resume is not None:
                        on_resume(last)
                    connected_once, dropped = True, False
                    opened, before = time.monotonic(), last
                    for sse in source:
                        event = _event(sse)
                        if event is None:
                            continue
                        last = event.seq
                        ended = event.terminal and event.seq > run_from
                        yield event
                        if failing_since is not None:
                            failing_since, attempt = None, 0  # the stream works again
                    if ended:
                        # The service closes the stream after the terminal event that ends
                        # it: one followed by a retry's `job.retried` ended a run only.
                        return
                reason = "the service closed the stream"
                # Closed at once with nothing new is not a working stream: keep backing off.
                if last != before or time.monotonic() - opened >= HEALTHY_STREAM_S:
                    failing_since, attempt = None, 0
            except _Unavailable as exc:
                reason = str(exc)  # e.g. a proxy's 502 while the service restarts
            except httpx2.TransportError as exc:
                if not connected_once:
                    raise self.unreachable(exc) from None
                reason = _describe(exc)
            now = time.monotonic()
            if failing_since is None:
                failing_since = now
            away = now - failing_since
            if away > RECONNECT_GIVE_UP_S:
                raise CliError(
                    f"lost the event stream of job {job_id} and could not reconnect to "
                    f"{self.url} for {RECONNECT_GIVE_UP_S:.0f} s (last event {last}); the job "
                    f"goes on: swarmctl watch {job_id}"
                )
            attempt += 1
            dropped = True
            if on_drop is not None:
                on_drop(reason, last)
            cap = RECONNECT_SOON_CAP_S if away < RECONNECT_PATIENT_S else RECONNECT_CAP_S
            sleep(min(RECONNECT_FIRST_S * 2 ** min(attempt - 1, 8), cap))


class _Unavailable(Exception):
    """A 5xx on a reconnect: the service (or the proxy before it) is coming back."""


def _event(sse: httpx2.ServerSentEvent) -> Event | None:
    try:
        data = json.loads(sse.data) if sse.data else {}
        seq = int(sse.id) if sse.id else int(data["seq"])
    except (ValueError, KeyError, TypeError):
        return None  # not one of the service's events; nothing to resume from
    return Event(seq=seq, type=sse.event, data=data if isinstance(data, dict) else {}, raw=sse.data)


def _describe(exc: httpx2.TransportError) -> str:
    if isinstance(exc, httpx2.ConnectError):
        return "the service is not answering"
    if isinstance(exc, httpx2.TimeoutException):
        return "the stream went silent"
    if isinstance(exc, httpx2.RemoteProtocolError | httpx2.ReadError):
        return "the connection dropped"
    return str(exc) or type(exc).__name__
