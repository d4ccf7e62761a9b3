"""The web dashboard in headless Chromium against the real service and simulator: the jobs
list, the live DAG of a job, the agent panel (with a tool-using agent's transcript), cancel,
map nodes and spawned sub-agents, convergence after a late open or a cut stream, and
tenants."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest
from playwright.sync_api import Locator, Page, expect

from tests.helpers.processes import (
    ROOT,
    Proc,
    child_env,
    free_port,
    start_listener,
    start_service,
    start_simulator,
    wait_job,
)
from tests.ui.conftest import CuttingProxy

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

EXAMPLES = ROOT / "examples"


def pipeline() -> dict[str, Any]:
    """Ten collectors → a cleaner → an analyzer: the last two wait for the rest."""
    graph: dict[str, Any] = json.loads((EXAMPLES / "data_pipeline.json").read_text())
    return graph


def submit(client: httpx2.Client, graph: dict[str, Any], **headers: str) -> str:
    response = client.post("/jobs", json=graph, headers=headers)
    assert response.status_code == 201, response.text
    job_id: str = response.json()["id"]
    return job_id


def api_statuses(client: httpx2.Client, job_id: str) -> dict[str, str]:
    statuses: dict[str, str] = {}
    cursor: str | None = None
    while True:
        params = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
        page = client.get(f"/jobs/{job_id}/agents", params=params).json()
        statuses.update({a["id"]: a["status"] for a in page["data"]})
        cursor = page["next_cursor"]
        if not cursor:
            return statuses


def page_statuses(page: Page) -> dict[str, str]:
    result: dict[str, str] = page.eval_on_selector_all(
        ".agent-row",
        "rows => Object.fromEntries(rows.map(r => [r.dataset.agentId, r.dataset.status]))",
    )
    return result


def one_too_long(name: str) -> dict[str, Any]:
    """A job whose agent too_long exceeds an upstream window of 1,000 tokens (a 400, never
    retried), so it fails and its dependent after is skipped; short completes."""
    return {
        "name": name,
        "max_tokens": 100,
        "context": {"long": "word " * 6000},
        "agents": [
            {"id": "short", "task": "Say hello."},
            {"id": "too_long", "task": "Summarise: {{context.long}}"},
            {"id": "after", "task": "Go on.", "depends_on": ["too_long"]},
        ],
    }


def open_job(page: Page, base: str, job_id: str) -> None:
    page.goto(f"{base}/ui/jobs/{job_id}")
    page.wait_for_selector("body[data-ready]")


def wait_final(page: Page, status: str) -> None:
    expect(page.locator("#job-status")).to_have_attribute("data-status", status, timeout=60_000)
    # The final read after the terminal event settles every row.
    unfinished = ".agent-row[data-status=pending], .agent-row[data-status=running]"
    expect(page.locator(unfinished)).to_have_count(0)
    expect(page.locator("#stream-state")).to_have_attribute("data-state", "ended")


def test_jobs_list_shows_a_submitted_job_without_asking_for_a_key(
    page: Page, service: Proc, client: httpx2.Client
) -> None:
    job_id = submit(client, pipeline())
    page.goto(f"{service.url}/ui/")
    row = page.locator(f"tr[data-job-id='{job_id}']")
    expect(row).to_be_visible()
    expect(row.locator("a.job-link")).to_have_text("data-pipeline")
    # Live: the row follows the job to its end, with its totals.
    expect(row).to_have_attribute("data-status", "completed", timeout=60_000)
    expect(row.locator("td.done")).to_have_text("12 / 12")
    assert "$" in row.inner_text()
    # No keys exist and the page is on loopback: no key is asked for.
    expect(page.locator("#key-dialog")).not_to_be_visible()
    # The status filter shows only the jobs of that status.
    page.select_option("#status-filter", "failed")
    expect(page.locator("#jobs-message")).to_have_text("No failed jobs.")
    expect(page.locator(f"tr[data-job-id='{job_id}']")).to_have_count(0)
    page.click("a[data-nav=jobs]")
    page.select_option("#status-filter", "completed")
    page.locator(f"tr[data-job-id='{job_id}'] a.job-link").click()
    expect(page).to_have_url(f"{service.url}/ui/jobs/{job_id}")
    expect(page.locator("#job-name")).to_have_text("data-pipeline")


def test_each_agent_is_a_node_whose_status_goes_pending_running_completed(
    page: Page, simulator: Proc, service: Proc, client: httpx2.Client
) -> None:
    # Slow collectors: the cleaner and the analyzer are still pending seconds after the
    # submit, however slowly the page loads.
    httpx2.post(f"{simulator.url}/_sim/config", json={"latency_uniform_ms": [2000, 2500]})
    graph = pipeline()
    job_id = submit(client, graph)
    open_job(page, service.url, job_id)
    ids = [a["id"] for a in graph["agents"]]
    # One drawn node and one index row per agent, each with its id and status.
    for agent_id in ids:
        expect(page.locator(f".dag-node[data-agent-id='{agent_id}']")).to_have_count(1)
    assert sorted(page_statuses(page)) == sorted(ids)
    wait_final(page, "completed")
    seen: dict[str, list[str]] = page.evaluate("window.__seen")
    # The cleaner and the analyzer wait for the collectors: the page was open before they
    # started, and saw each state in turn.
    assert seen["cleaner"] == ["pending", "running", "completed"]
    assert seen["analyzer"] == ["pending", "running", "completed"]
    for agent_id in ids:
        assert seen[agent_id][-1] == "completed"
        node = page.locator(f".dag-node[data-agent-id='{agent_id}']")
        expect(node).to_have_attribute("data-status", "completed")
    # The header's totals are the API's.
    job = client.get(f"/jobs/{job_id}?agents=false").json()
    stat = page.locator("[data-stat=tokens] .v")
    expect(stat).to_have_text(f"{job['usage']['total_tokens']:,}")
    expect(page.locator("[data-stat=done] .v")).to_have_text("12 / 12")


def test_clicking_a_node_shows_its_prompt_output_and_usage(
    page: Page, service: Proc, client: httpx2.Client
) -> None:
    job_id = submit(client, pipeline())
    wait_job(client, job_id)
    open_job(page, service.url, job_id)
    page.click(".dag-node[data-agent-id='cleaner']")
    agent = client.get(f"/jobs/{job_id}/agents/cleaner").json()
    expect(page.locator("#panel-agent")).to_have_attribute("data-agent-id", "cleaner")
    expect(page.locator("#agent-output")).to_have_text(agent["output"])
    prompt = page.locator("[data-block=prompt] pre")
    expect(prompt).to_have_text(agent["prompt"])
    expect(page.locator("[data-field=tokens] .v")).to_contain_text(
        f"{agent['usage']['total_tokens']:,}"
    )
    expect(page.locator("[data-field=attempts] .v")).to_have_text("1")


def test_a_failed_agent_shows_its_error(page: Page, tmp_path: Path) -> None:
    # Prompts over 1,000 tokens are refused by this upstream (400, not retried).
    sim = start_simulator(tmp_path, "--latency-uniform-ms", "50,100", "--context-window", "1000")
    svc = start_service(tmp_path, {"SWARM_UPSTREAM_BASE_URL": sim.url + "/v1"})
    try:
        with httpx2.Client(base_url=svc.url, timeout=10) as client:
            job_id = submit(client, one_too_long("one-too-long"))
            open_job(page, svc.url, job_id)
            wait_final(page, "failed")
            node = page.locator(".dag-node[data-agent-id='too_long']")
            expect(node).to_have_attribute("data-status", "failed")
            expect(page.locator(".dag-node[data-agent-id='after']")).to_have_attribute(
                "data-status", "skipped"
            )
            expect(page.locator(".dag-node[data-agent-id='short']")).to_have_attribute(
                "data-status", "completed"
            )
            node.click()
            error = client.get(f"/jobs/{job_id}/agents/too_long").json()["last_error"]
            assert error
            expect(page.locator("#agent-error")).to_have_text(error)
            expect(page.locator(".job-error")).to_be_visible()
    finally:
        svc.stop()
        sim.stop()


def test_retry_from_the_page_runs_the_failed_agents_again(page: Page, tmp_path: Path) -> None:
    # The upstream refuses long prompts until its window is raised; then "Retry failed" runs
    # the failed agent and its skipped dependent again, and the page follows the new run.
    sim = start_simulator(tmp_path, "--latency-uniform-ms", "50,100", "--context-window", "1000")
    svc = start_service(tmp_path, {"SWARM_UPSTREAM_BASE_URL": sim.url + "/v1"})
    try:
        with httpx2.Client(base_url=svc.url, timeout=10) as client:
            job_id = submit(client, one_too_long("retry-from-the-page"))
            open_job(page, svc.url, job_id)
            wait_final(page, "failed")
            retry = page.locator("#retry")
            expect(retry).to_be_enabled()
            resp = httpx2.post(f"{sim.url}/_sim/config", json={"context_window": 1_000_000})
            assert resp.status_code == 200, resp.text
            retry.click()
            wait_final(page, "completed")
            for agent in ("short", "too_long", "after"):
                expect(page.locator(f".dag-node[data-agent-id='{agent}']")).to_have_attribute(
                    "data-status", "completed"
                )
            expect(retry).to_be_disabled()
            assert client.get(f"/jobs/{job_id}").json()["status"] == "completed"
            # The agent that had completed was not called again.
            assert client.get(f"/jobs/{job_id}/agents/short").json()["attempts"] == 1
    finally:
        svc.stop()
        sim.stop()


def test_cancel_from_the_page_cancels_the_job(page: Page, tmp_path: Path) -> None:
    sim = start_simulator(tmp_path, "--latency-uniform-ms", "1500,2000")
    svc = start_service(tmp_path, {"SWARM_UPSTREAM_BASE_URL": sim.url + "/v1"})
    try:
        with httpx2.Client(base_url=svc.url, timeout=10) as client:
            graph = {
                "name": "slow",
                "max_concurrency": 2,
                "agents": [{"id": f"a{i}", "task": f"Task {i}."} for i in range(20)],
            }
            job_id = submit(client, graph)
            open_job(page, svc.url, job_id)
            expect(page.locator(".agent-row[data-status=running]").first).to_be_attached()
            page.click("#cancel")
            wait_final(page, "cancelled")
            job = wait_job(client, job_id)
            assert job["status"] == "cancelled"
            assert job["counts"]["cancelled"] >= 10
            statuses = page_statuses(page)
            assert statuses == api_statuses(client, job_id)
            expect(page.locator("#cancel")).to_be_disabled()
    finally:
        svc.stop()
        sim.stop()


def test_a_300_item_map_node_is_one_node_that_expands(
    page: Page, service: Proc, client: httpx2.Client
) -> None:
    graph = {
        "name": "map-300",
        "max_concurrency": 100,
        "context": {"cities": [f"city {i}" for i in range(300)]},
        "agents": [
            {"id": "facts", "map": {"over": "context.cities"}, "task": "One fact about {{item}}."},
            {"id": "report", "task": "Merge the facts.", "depends_on": ["facts"]},
        ],
    }
    job_id = submit(client, graph)
    open_job(page, service.url, job_id)
    node = page.locator(".dag-node.aggregate[data-agent-id='facts']")
    expect(node).to_have_attribute("data-count", "300")
    expect(page.locator(".cell")).to_have_count(0)  # collapsed: one node, a count, a bar
    node.locator("button.expand").click()
    cells = page.locator(".cell[data-agent-id^='facts[']")
    expect(cells).to_have_count(300)
    wait_final(page, "completed")
    expect(page.locator(".cell[data-status=completed]")).to_have_count(300)
    expect(node.locator(".count")).to_have_text("300/300 items")
    page.locator(".cell[data-agent-id='facts[42]']").click()
    expect(page.locator("#panel-agent")).to_have_attribute("data-agent-id", "facts[42]")
    output = client.get(f"/jobs/{job_id}/agents/facts%5B42%5D").json()["output"]
    expect(page.locator("#agent-output")).to_have_text(output)
    node.locator("button.expand").click()
    expect(page.locator(".cell")).to_have_count(0)


def test_a_page_opened_mid_job_converges_to_the_final_state(
    page: Page, service: Proc, client: httpx2.Client
) -> None:
    graph = {
        "name": "mid-job",
        "max_concurrency": 4,
        "agents": [{"id": f"doc_{i}", "task": f"Analyse document {i}."} for i in range(40)]
        + [{"id": "report", "task": "Merge.", "depends_on": [f"doc_{i}" for i in range(40)]}],
    }
    job_id = submit(client, graph)
    deadline = time.monotonic() + 30
    while client.get(f"/jobs/{job_id}?agents=false").json()["counts"]["completed"] < 4:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    open_job(page, service.url, job_id)
    assert "pending" in page_statuses(page).values()  # it was opened mid-job
    wait_final(page, "completed")
    assert page_statuses(page) == api_statuses(client, job_id)
    assert set(page_statuses(page).values()) == {"completed"}


def test_a_page_whose_stream_is_cut_reconnects_and_converges(
    page: Page, client: httpx2.Client, proxy: CuttingProxy
) -> None:
    graph = {
        "name": "cut",
        "max_concurrency": 3,
        "agents": [{"id": f"doc_{i}", "task": f"Analyse document {i}."} for i in range(30)],
    }
    resumed_after: list[str] = []
    page.on(
        "request",
        lambda r: (
            resumed_after.append(r.headers.get("last-event-id", ""))
            if r.url.endswith("/events")
            else None
        ),
    )
    job_id = submit(client, graph)
    open_job(page, proxy.url, job_id)
    expect(page.locator("#stream-state")).to_have_attribute("data-state", "live")
    expect(page.locator(".agent-row[data-status=completed]").first).to_be_attached()
    proxy.cut()
    assert client.get(f"/jobs/{job_id}?agents=false").json()["status"] == "running"
    wait_final(page, "completed")
    assert page_statuses(page) == api_statuses(client, job_id)
    # It resumed after the last event it had, not from the start.
    assert len(resumed_after) >= 2
    assert resumed_after[0] == "0" and int(resumed_after[-1]) > 0


def test_keys_are_asked_once_and_another_tenants_job_is_not_found(
    page: Page, tmp_path: Path, simulator: Proc
) -> None:
    db = tmp_path / "tenants.db"

    def create_key(tenant: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "app.admin", "keys", "create", "--tenant", tenant],
            cwd=ROOT,
            env=child_env(SWARM_DATABASE_URL=f"sqlite:///{db}"),
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip().splitlines()[-1]

    key_a, key_b = create_key("alpha"), create_key("beta")
    svc = start_service(tmp_path, {"SWARM_UPSTREAM_BASE_URL": simulator.url + "/v1"}, db=db)
    try:
        with httpx2.Client(base_url=svc.url, timeout=10) as client:
            mine = submit(client, pipeline(), Authorization=f"Bearer {key_a}")
            theirs = submit(client, pipeline(), Authorization=f"Bearer {key_b}")
            page.goto(f"{svc.url}/ui/")
            dialog = page.locator("#key-dialog")
            expect(dialog).to_be_visible()  # the service has keys: it asks for one
            page.fill("#key-input", "swarm_not-a-key")
            page.click("#key-submit")
            expect(page.locator("#key-reason")).to_contain_text("not valid")
            page.fill("#key-input", key_a)
            page.click("#key-submit")
            expect(page.locator(f"tr[data-job-id='{mine}']")).to_be_visible()
            expect(page.locator(f"tr[data-job-id='{theirs}']")).to_have_count(0)
            assert page.evaluate("sessionStorage.getItem('swarm.apiKey')") == key_a
            # Kept for the session: another page of the dashboard does not ask again.
            open_job(page, svc.url, mine)
            expect(dialog).not_to_be_visible()
            expect(page.locator("#job-name")).to_have_text("data-pipeline")
            # Beta's job, with alpha's key: not found, as in the API.
            open_job(page, svc.url, theirs)
            expect(page.locator("#not-found")).to_contain_text("Job not found")
            expect(dialog).not_to_be_visible()
    finally:
        svc.stop()


def test_the_upstream_page_shows_the_check(page: Page, service: Proc) -> None:
    page.goto(f"{service.url}/ui/upstream")
    expect(page.locator("#upstream-status")).to_have_text("ok")
    expect(page.locator("section.upstream[data-status=ok]")).to_have_count(1)
    expect(page.locator("section.upstream")).to_contain_text("kimi-k2.5 (default): offered")


def test_the_panel_lists_each_retry_with_its_reason(page: Page, tmp_path: Path) -> None:
    sim = start_simulator(tmp_path, "--latency-uniform-ms", "20,50", "--error-rate", "0.4")
    svc = start_service(
        tmp_path,
        {"SWARM_UPSTREAM_BASE_URL": sim.url + "/v1", "SWARM_RETRY_BACKOFF_BASE_S": "0.05"},
    )
    try:
        with httpx2.Client(base_url=svc.url, timeout=10) as client:
            graph = {
                "name": "flaky",
                "max_retries": 8,
                "agents": [{"id": f"a{i}", "task": f"Task {i}."} for i in range(12)],
            }
            job_id = submit(client, graph)
            wait_job(client, job_id)
            details = [client.get(f"/jobs/{job_id}/agents/a{i}").json() for i in range(12)]
            retried = max(details, key=lambda d: len(d["retries"]))
            assert retried["retries"], "no agent was retried at a 40 % error rate"
            open_job(page, svc.url, job_id)
            page.click(f".dag-node[data-agent-id='{retried['id']}']")
            rows = page.locator("[data-block=retries] tr.retry")
            expect(rows).to_have_count(len(retried["retries"]))
            first = retried["retries"][0]
            expect(rows.first).to_contain_text(first["reason"])
            expect(rows.first).to_contain_text(first["error"])
            expect(page.locator("[data-field=attempts] .v")).to_have_text(str(retried["attempts"]))
    finally:
        svc.stop()
        sim.stop()


CLIP = 1500  # the panel shows this many characters of a long text until it is expanded


def step_text(step: Locator, name: str) -> str:
    """The whole text of a transcript step's `name` text, expanding it first if it is cut."""
    more = step.locator(f"button[data-expander={name}]")
    if more.count():
        more.click()
    text = step.locator(f"pre[data-text={name}]").text_content()
    assert text is not None
    return text


def test_a_tool_using_agent_shows_its_transcript(page: Page, tmp_path: Path) -> None:
    port = free_port()
    mcp = start_listener(tmp_path, "mcp", ["examples/mcp_server.py", "--port", str(port)], port)
    # Answers of 500-600 tokens: the final one is longer than the panel shows at first.
    sim = start_simulator(
        tmp_path, "--latency-uniform-ms", "20,60", "--seed", "3", "--output-tokens", "500,600"
    )
    env = {"SWARM_UPSTREAM_BASE_URL": sim.url + "/v1", "SWARM_TOOL_ALLOW_PRIVATE": "true"}
    svc = start_service(tmp_path, env)
    try:
        with httpx2.Client(base_url=svc.url, timeout=10) as client:
            graph = {
                "name": "tool-user",
                "agents": [
                    {
                        "id": "researcher",
                        "task": "How do heat pumps cope with deep cold? Search; use 3 tools.",
                        "tools": [
                            {"type": "mcp", "url": mcp.url + "/mcp"},
                            # The service has no signing secret, so this call is an error
                            # result (and nothing is sent).
                            {
                                "type": "http",
                                "name": "crm_lookup",
                                "description": "Look a customer up.",
                                "parameters": {
                                    "type": "object",
                                    "properties": {"name": {"type": "string"}},
                                },
                                "url": mcp.url + "/crm",
                            },
                        ],
                        "max_steps": 5,
                    },
                    {"id": "plain", "task": "Say hello."},
                ],
            }
            job_id = submit(client, graph)
            job = wait_job(client, job_id, timeout=90)
            assert job["status"] == "completed", job
            detail = client.get(f"/jobs/{job_id}/agents/researcher").json()
            open_job(page, svc.url, job_id)
            # An agent without tools has no transcript block.
            page.click(".dag-node[data-agent-id='plain']")
            expect(page.locator("#panel-agent")).to_have_attribute("data-agent-id", "plain")
            expect(page.locator("[data-block=transcript]")).to_have_count(0)

            page.click(".dag-node[data-agent-id='researcher']")
            expect(page.locator("#panel-agent")).to_have_attribute("data-agent-id", "researcher")
            transcript = detail["transcript"]
            steps = page.locator("[data-block=transcript] [data-step-kind]")
            expect(steps).to_have_count(len(transcript))
            kinds = steps.evaluate_all("els => els.map(e => e.dataset.stepKind)")
            assert kinds == [s["kind"] for s in transcript]
            # Offered three tools, the model used each in turn: 3 calls, 3 results, 4 answers.
            calls = [s for s in transcript if s["kind"] == "tool_call"]
            results = [s for s in transcript if s["kind"] == "tool_result"]
            assert sorted(s["tool"] for s in calls) == ["crm_lookup", "search", "word_count"]
            assert len(results) == 3 and kinds.count("model") == 4
            for r in results:  # the caller-served tool's call failed, the MCP tools' did not
                assert r["data"]["ok"] is (r["tool"] != "crm_lookup"), r

            for i, call in enumerate(calls):
                step = page.locator("[data-block=transcript] [data-step-kind=tool_call]").nth(i)
                expect(step).to_have_attribute("data-call-id", call["call_id"])
                expect(step.locator("[data-field=tool]")).to_have_text(call["tool"])
                expect(step.locator("[data-field=call-id]")).to_have_text(call["call_id"])
                shown = json.loads(step_text(step, "arguments"))
                assert shown == json.loads(call["data"]["arguments"])
            for i, result in enumerate(results):
                step = page.locator("[data-block=transcript] [data-step-kind=tool_result]").nth(i)
                expect(step).to_have_attribute("data-call-id", result["call_id"])
                ok = result["data"]["ok"]
                expect(step).to_have_attribute("data-ok", "true" if ok else "false")
                expect(step.locator("[data-field=outcome]")).to_have_text("ok" if ok else "error")
                expect(step.locator("[data-field=tool]")).to_have_text(result["tool"])
                chars = result["data"]["chars"]
                expect(step.locator("[data-field=chars]")).to_have_text(f"{chars:,} chars")
                assert step_text(step, "content") == result["data"]["content"]
            # Each answer that asked for a tool lists its request; the last is the output.
            models = page.locator("[data-block=transcript] [data-step-kind=model]")
            for i, model in enumerate(s for s in transcript if s["kind"] == "model"):
                requests = models.nth(i).locator("li.request")
                expect(requests).to_have_count(len(model["data"]["tool_calls"]))
                for k, asked in enumerate(model["data"]["tool_calls"]):
                    expect(requests.nth(k)).to_have_attribute("data-call-id", asked["call_id"])
                    expect(requests.nth(k).locator(".tool-name")).to_have_text(asked["name"])
            # The long answer is cut, with a button that shows it whole, and back.
            output = detail["output"]
            assert len(output) > CLIP
            last = models.last.locator("pre[data-text=content]")
            more = models.last.locator("button[data-expander=content]")
            expect(last).to_have_attribute("data-clipped", "true")
            expect(more).to_have_text(f"show all ({len(output):,} chars)")
            assert last.text_content() == output[:CLIP] + "…"
            more.click()
            expect(last).to_have_attribute("data-clipped", "false")
            assert last.text_content() == output
            more.click()
            assert last.text_content() == output[:CLIP] + "…"
    finally:
        svc.stop()
        sim.stop()
        mcp.stop()


def test_the_transcript_grows_in_the_panel_while_the_agent_runs(page: Page, tmp_path: Path) -> None:
    port = free_port()
    args = ["examples/mcp_server.py", "--port", str(port), "--delay-s", "5"]
    mcp = start_listener(tmp_path, "mcp", args, port)  # each search takes 5 s
    sim = start_simulator(tmp_path, "--latency-uniform-ms", "20,60", "--seed", "3")
    env = {"SWARM_UPSTREAM_BASE_URL": sim.url + "/v1", "SWARM_TOOL_ALLOW_PRIVATE": "true"}
    svc = start_service(tmp_path, env)
    try:
        with httpx2.Client(base_url=svc.url, timeout=10) as client:
            graph = {
                "name": "slow-tools",
                "agents": [
                    {
                        "id": "researcher",
                        "task": "How do heat pumps cope with deep cold? Search; use 3 tools.",
                        "tools": [{"type": "mcp", "url": mcp.url + "/mcp"}],
                        "max_steps": 5,
                    }
                ],
            }
            job_id = submit(client, graph)
            open_job(page, svc.url, job_id)
            page.click(".dag-node[data-agent-id='researcher']")
            calls = page.locator("[data-block=transcript] [data-step-kind=tool_call]")
            # A search is under way (the loop takes 10 s or more): it is shown while it runs.
            expect(calls.first).to_be_visible(timeout=60_000)
            assert client.get(f"/jobs/{job_id}?agents=false").json()["status"] == "running"
            # Without another click the panel follows the loop to its end.
            wait_final(page, "completed")
            transcript = client.get(f"/jobs/{job_id}/agents/researcher").json()["transcript"]
            steps = page.locator("[data-block=transcript] [data-step-kind]")
            expect(steps).to_have_count(len(transcript))
            expect(calls).to_have_count(3)
            expect(page.locator("#panel-agent")).to_have_attribute("data-status", "completed")
    finally:
        svc.stop()
        sim.stop()
        mcp.stop()


def test_spawned_agents_are_grouped_under_their_parent(
    page: Page, service: Proc, client: httpx2.Client
) -> None:
    graph = {
        "name": "spawner",
        "agents": [
            {
                "id": "lead",
                "task": "Survey heat pump markets: spawn 3 researchers.",
                "tools": [{"type": "spawn_agents", "max_agents": 5}],
                "max_steps": 3,
            }
        ],
    }
    job_id = submit(client, graph)
    open_job(page, service.url, job_id)  # before the spawn: the sub-agents arrive live
    wait_final(page, "completed")
    spawned = sorted(
        a["id"] for a in client.get(f"/jobs/{job_id}").json()["agents"] if a["kind"] == "spawned"
    )
    assert len(spawned) == 3
    # One node for the parent, with a count and a mini bar of what it spawned.
    node = page.locator(".dag-node.aggregate[data-agent-id='lead']")
    expect(node).to_have_attribute("data-count", "3")
    expect(node.locator(".count")).to_have_text("3/3 spawned")
    expect(node.locator(".bar.mini .seg.st-completed")).to_have_count(1)
    expect(page.locator(".cell")).to_have_count(0)
    node.locator("button.expand").click()
    cells = page.locator(".cell")
    expect(cells).to_have_count(3)
    assert sorted(cells.evaluate_all("els => els.map(e => e.dataset.agentId)")) == spawned
    expect(page.locator(".cell[data-kind=spawned][data-status=completed]")).to_have_count(3)
    expect(page.locator(".agent-row[data-kind=spawned]")).to_have_count(3)
    # A spawned agent's panel names its parent; the parent's transcript shows the spawn.
    page.locator(f".cell[data-agent-id='{spawned[0]}']").click()
    expect(page.locator("#panel-agent")).to_have_attribute("data-agent-id", spawned[0])
    expect(page.locator("[data-field=kind] .v")).to_have_text("spawned by lead")
    output = client.get(f"/jobs/{job_id}/agents/{spawned[0]}").json()["output"]
    expect(page.locator("#agent-output")).to_have_text(output)
    node.locator(".name").click()
    expect(page.locator("#panel-agent")).to_have_attribute("data-agent-id", "lead")
    call = page.locator("[data-block=transcript] [data-step-kind=tool_call]")
    expect(call).to_have_count(1)
    expect(call.locator("[data-field=tool]")).to_have_text("spawn_agents")
    result = page.locator("[data-block=transcript] [data-step-kind=tool_result]")
    content = json.loads(step_text(result, "content"))
    assert sorted(a["agent_id"] for a in content["agents"]) == spawned
    assert {a["status"] for a in content["agents"]} == {"completed"}
