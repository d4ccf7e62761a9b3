"""swarmctl against the running service: what a user sees, and the exit codes."""

from __future__ import annotations

import json
import re

import pytest

from tests.cli.conftest import EXAMPLES, assert_plain, run_cli
from tests.helpers.sse import parse

pytestmark = pytest.mark.e2e

DOC_ANALYSIS = str(EXAMPLES / "doc_analysis.json")
AGENTS = ("extract_metadata", "extract_entities", "sentiment_analysis", "summary")


@pytest.fixture(scope="module")
def finished_job(url: str) -> tuple[str, str]:
    """doc_analysis followed to the end: its id and what --follow printed."""
    result = run_cli(url, "submit", DOC_ANALYSIS, "--follow")
    assert result.code == 0, result.text
    match = re.search(r"submitted job (\w+)", result.out)
    assert match, result.out
    return match.group(1), result.out


def test_submit_follow_prints_one_line_per_state_change_and_a_summary(
    finished_job: tuple[str, str], url: str
) -> None:
    job_id, out = finished_job
    assert f"following job {job_id} (doc-analysis, 4 agents)" in out
    for agent in AGENTS:
        assert len(re.findall(rf"\] {agent} started \(kimi-k2\.5\)", out)) == 1, out
        assert len(re.findall(rf"\] {agent} completed: [\d,]+ tokens, \$", out)) == 1, out
    assert re.search(r"\+\d+\.\d\ds \[4/4\] job completed", out), out
    # The summary: counts, tokens, cost, wall time, where the results are.
    assert re.search(rf"job {job_id} completed in \d+\.\d s: 4 of 4 agents completed", out)
    assert re.search(r"tokens\s+[\d,]+ \(prompt [\d,]+, completion [\d,]+\)", out), out
    assert re.search(r"cost\s+\$0\.\d{4}", out), out
    assert f"swarmctl results {job_id}" in out
    assert "failed agents" not in out
    # Off a terminal: no live view, no escape codes.
    assert "━" not in out and "\x1b[" not in out


def test_status_shows_counts_tokens_cost_and_agents(
    finished_job: tuple[str, str], url: str
) -> None:
    job_id, _ = finished_job
    result = run_cli(url, "status", job_id)
    assert result.code == 0, result.text
    assert_plain(result)
    assert re.search(rf"doc-analysis\s+{job_id}\s+completed", result.out)
    assert "agents  4: 4 completed" in result.out
    for agent in AGENTS:
        assert re.search(rf"^{agent}\s+completed\s+kimi-k2\.5\s+1\s", result.out, re.M)
    as_json = json.loads(run_cli(url, "status", job_id, "--json").out)
    assert as_json["id"] == job_id and as_json["counts"]["completed"] == 4


def test_results_all_one_agent_and_json(finished_job: tuple[str, str], url: str) -> None:
    job_id, _ = finished_job
    answer = json.loads(run_cli(url, "results", job_id, "--json").out)
    assert answer["complete"] is True and set(answer["results"]) == set(AGENTS)

    every = run_cli(url, "results", job_id)
    assert every.code == 0 and every.err == ""
    for agent, output in answer["results"].items():
        assert agent in every.out
        assert output in every.out

    one = run_cli(url, "results", job_id, "--agent", "summary")
    assert one.code == 0
    assert one.out == answer["results"]["summary"] + "\n"  # raw: fit for a pipe

    detail = json.loads(run_cli(url, "results", job_id, "--agent", "summary", "--json").out)
    assert detail["id"] == "summary" and detail["usage"]["total_tokens"] > 0


def test_events_raw_stream_and_resume(finished_job: tuple[str, str], url: str) -> None:
    job_id, _ = finished_job
    raw = run_cli(url, "events", job_id)
    assert raw.code == 0, raw.text
    events = parse(raw.out)
    seqs = [int(e.id or 0) for e in events]
    assert seqs == list(range(1, len(seqs) + 1))
    assert events[0].event == "job.queued" and events[-1].event == "job.completed"
    assert all(e.json()["seq"] == int(e.id or 0) for e in events)

    resumed = parse(run_cli(url, "events", job_id, "--after", "5").out)
    assert [e.id for e in resumed] == [e.id for e in events[5:]]

    lines = run_cli(url, "events", job_id, "--json").out.splitlines()
    assert [json.loads(line)["seq"] for line in lines] == seqs


def test_list_and_filter(finished_job: tuple[str, str], url: str) -> None:
    job_id, _ = finished_job
    listed = run_cli(url, "list")
    assert listed.code == 0
    assert_plain(listed)
    assert re.search(rf"^{job_id}\s+doc-analysis\s+completed\s+4\s", listed.out, re.M)
    assert job_id not in run_cli(url, "list", "--status", "failed").out
    page = json.loads(run_cli(url, "list", "--status", "completed", "--json").out)
    assert job_id in [j["id"] for j in page["data"]]

    wrong = run_cli(url, "list", "--status", "done")
    assert wrong.code == 2
    assert "--status must be one of queued, running, completed, failed, cancelled" in wrong.err


def test_upstream_check(url: str) -> None:
    result = run_cli(url, "upstream")
    assert result.code == 0, result.text
    assert_plain(result)
    assert "upstream check: ok" in result.out
    assert re.search(r"default\s+http://127\.0\.0\.1:\d+/v1\s+ok", result.out)
    assert "kimi-k2.5 ✓ (default)" in result.out


def test_idempotent_submit_returns_the_first_job(url: str) -> None:
    first = run_cli(url, "submit", DOC_ANALYSIS, "-k", "cli-test-key", "-q")
    again = run_cli(url, "submit", DOC_ANALYSIS, "--idempotency-key", "cli-test-key")
    assert first.code == 0 and again.code == 0, again.text
    job_id = first.out.strip()
    assert re.fullmatch(r"[0-9a-z]{26}", job_id)
    assert f"already submitted with this idempotency key: job {job_id}" in again.out

    other = run_cli(url, "submit", str(EXAMPLES / "data_pipeline.json"), "-k", "cli-test-key")
    assert other.code == 2
    assert "the service refused the job (409 conflict): Idempotency-Key was already used" in (
        other.err
    )


def test_failed_job_exits_1_and_names_the_failed_agents(url: str) -> None:
    graph = {
        "name": "partly-broken",
        "agents": [
            {"id": "fine", "task": "say hi"},
            {"id": "wrong_model", "task": "say hi", "model": "deepseek-v3.2"},
            {"id": "downstream", "task": "merge", "depends_on": ["fine", "wrong_model"]},
        ],
    }
    result = run_cli(url, "submit", "-", "--follow", stdin=json.dumps(graph))
    assert result.code == 1, result.text
    assert_plain(result)
    assert re.search(r"\] wrong_model failed \(model_not_found\): .*deepseek-v3\.2", result.out)
    assert "] downstream skipped: dependency 'wrong_model' failed" in result.out
    assert re.search(r"job \w+ failed in [\d.]+ s: 1 of 3 agents completed", result.out)
    assert "agents   1 completed, 1 failed, 1 skipped" in result.out
    assert "failed agents (1):" in result.out
    assert re.search(r"^  wrong_model: .*deepseek-v3\.2", result.out, re.M)

    job_id = re.search(r"submitted job (\w+)", result.out).group(1)  # type: ignore[union-attr]
    no_output = run_cli(url, "results", job_id, "--agent", "wrong_model")
    assert no_output.code == 1
    assert "error: agent wrong_model has no output: it is failed (" in no_output.err


def test_cancel_a_running_job_then_watch_it_end(url: str) -> None:
    # One agent at a time over 60 agents: seconds of work, cancelled well before the end.
    graph = {
        "name": "to-cancel",
        "max_concurrency": 1,
        "agents": [{"id": f"a{i}", "task": f"task {i}"} for i in range(60)],
    }
    submitted = run_cli(url, "submit", "-", "-q", stdin=json.dumps(graph))
    job_id = submitted.out.strip()
    cancelled = run_cli(url, "cancel", job_id)
    assert cancelled.code == 0, cancelled.text
    assert re.match(
        rf"cancellation requested for job {job_id} \(it was (queued|running)\)", (cancelled.out)
    )
    watched = run_cli(url, "watch", job_id)
    assert watched.code == 1, watched.text
    assert re.search(r"job cancelled: cancelled by request", watched.out)
    assert re.search(rf"job {job_id} cancelled in", watched.out)
    again = run_cli(url, "cancel", job_id)
    assert again.code == 2
    assert f"error: cannot cancel job {job_id} (409 conflict): job already finished" in again.err


def test_batch_generator_pipes_into_submit(url: str) -> None:
    import subprocess
    import sys

    graph = subprocess.run(
        [sys.executable, str(EXAMPLES / "make_batch.py"), "30"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = run_cli(url, "submit", "-", "--follow", stdin=graph)
    assert result.code == 0, result.text
    assert "(document-batch-30, 31 agents" in result.out
    assert re.search(r"\[31/31\] report completed", result.out)
