"""swarmctl's error paths: one plain message on stderr, exit code 2, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.conftest import EXAMPLES, assert_plain, run_cli
from tests.helpers.processes import free_port

pytestmark = pytest.mark.e2e


def test_unknown_job_is_a_plain_404(url: str) -> None:
    for args in (["status", "nope"], ["results", "nope"], ["events", "nope"], ["watch", "nope"]):
        result = run_cli(url, *args)
        assert result.code == 2, (args, result.text)
        assert_plain(result)
        assert result.out == ""
        assert result.err.startswith("error: job nope (404 not found): job not found"), result.err
    agent = run_cli(url, "results", "nope", "--agent", "x")
    assert agent.err.startswith("error: agent x of job nope (404 not found): job not found")


def test_invalid_graph_shows_each_problem_with_where_it_is(url: str, tmp_path: Path) -> None:
    graph = {
        "agents": [
            {"id": "a", "task": "x", "depends_on": ["b"]},
            {"id": "c", "task": "{{context.missing}}"},
            {"id": "d", "task": "t", "depends_on": ["e"]},
            {"id": "e", "task": "t", "depends_on": ["d"]},
        ]
    }
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(graph))
    result = run_cli(url, "submit", str(path), "--follow")
    assert result.code == 2
    assert_plain(result)
    lines = result.err.splitlines()
    assert lines[0] == "error: the service refused the job (422 invalid):"
    assert "  agents[0] (a).depends_on[0]: agent 'a' depends on unknown agent 'b'" in lines
    assert any(
        line.startswith("  agents[1] (c).task: ") and "{{context.missing}}" in line
        for line in lines
    ), lines

    # A cycle is reported once the graph is otherwise sound.
    del graph["agents"][:2]
    path.write_text(json.dumps(graph))
    cycle = run_cli(url, "submit", str(path))
    assert cycle.code == 2
    assert "  agents[0] (d).depends_on[0]: dependency cycle: 'd' -> 'e' -> 'd'" in cycle.err


def test_schema_errors_name_the_field(url: str) -> None:
    graph = {"agents": [{"id": "a", "task": "x", "temperature": 9}], "colour": "blue"}
    result = run_cli(url, "submit", "-", stdin=json.dumps(graph))
    assert result.code == 2
    assert "  agents[0] (a).temperature: Input should be less than or equal to 2" in result.err
    assert "  colour: unknown field 'colour'; the fields here are model, system_prompt," in (
        result.err
    )


def test_too_large_is_a_plain_413(url: str) -> None:
    # The service under test takes bodies up to 200 kB; 600 documents are about 300 kB.
    graph = subprocess.run(
        [sys.executable, str(EXAMPLES / "make_batch.py"), "600"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = run_cli(url, "submit", "-", stdin=graph)
    assert result.code == 2
    assert_plain(result)
    assert result.err.startswith(
        "error: the service refused the job (413 too large): request body is larger than the "
        "limit of 200,000 bytes"
    ), result.err


def test_bad_json_file_never_reaches_the_service(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"agents": [\n  {"id": "a",, "task": "x"}\n]}\n')
    # An unreachable URL: the file is refused before any request.
    nowhere = f"http://127.0.0.1:{free_port()}"
    result = run_cli(nowhere, "submit", str(broken))
    assert result.code == 2
    assert_plain(result)
    assert result.err == (
        f"error: {broken} is not valid JSON: Expecting property name enclosed in double "
        "quotes (line 2, column 14)\n"
    )
    missing = run_cli(nowhere, "submit", str(tmp_path / "nope.json"))
    assert missing.code == 2
    assert missing.err == f"error: no such file: {tmp_path / 'nope.json'}\n"
    directory = run_cli(nowhere, "submit", str(tmp_path))
    assert directory.err == f"error: {tmp_path} is a directory, not a job graph file\n"
    binary = tmp_path / "graph.bin"
    binary.write_bytes(b"\xff\xfe\x00junk")
    assert "is not UTF-8 text" in run_cli(nowhere, "submit", str(binary)).err


def test_unreachable_service_says_how_to_start_it(tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    expected = f"error: cannot reach the service at {nowhere}: is it running? (make run)\n"
    for args in (
        ["list"],
        ["status", "x"],
        ["watch", "x"],
        ["events", "x"],
        ["upstream"],
        ["submit", str(EXAMPLES / "doc_analysis.json"), "--follow"],
    ):
        result = run_cli(nowhere, *args)
        assert result.code == 2, (args, result.text)
        assert result.err == expected, (args, result.err)
        assert result.out == ""


def test_swarm_url_without_scheme_and_with_a_slash(url: str) -> None:
    bare = url.removeprefix("http://") + "/"
    assert run_cli(bare, "list").code == 0


def test_usage_errors_exit_2() -> None:
    nowhere = "http://127.0.0.1:9"
    missing_arg = run_cli(nowhere, "submit")
    assert missing_arg.code == 2
    assert "Usage: swarmctl submit [OPTIONS]" in missing_arg.err
    assert "Missing argument 'FILE'" in missing_arg.err
    assert "Traceback" not in missing_arg.err
    assert run_cli(nowhere, "frobnicate").code == 2
    assert run_cli(nowhere, "events", "x", "--after", "-1").code == 2
    assert run_cli(nowhere, "list", "--limit", "0").code == 2
    helped = run_cli(nowhere, "--help")
    assert helped.code == 0
    for command in ("submit", "watch", "status", "results", "events", "cancel", "list"):
        assert command in helped.out


def test_keys_are_managed_on_the_services_database(tmp_path: Path) -> None:
    db = {"SWARM_DATABASE_URL": f"sqlite:///{tmp_path}/keys.db"}
    created = run_cli("http://127.0.0.1:9", "keys", "create", "--tenant", "acme", **db)
    assert created.code == 0, created.text
    key = created.out.strip()
    assert key.startswith("swarm_") and "not shown again" in created.err
    listed = run_cli("http://127.0.0.1:9", "keys", "list", **db)
    assert listed.code == 0 and "tenant=acme" in listed.out and key not in listed.out
    revoked = run_cli("http://127.0.0.1:9", "keys", "revoke", key[:12], **db)
    assert revoked.code == 0 and "revoked" in revoked.out
    again = run_cli("http://127.0.0.1:9", "keys", "revoke", key[:12], **db)
    assert again.code == 1 and "no active key" in again.err
    assert_plain(again)


def test_webhook_secrets_are_shown_and_rotated_on_the_services_database(tmp_path: Path) -> None:
    db = {"SWARM_DATABASE_URL": f"sqlite:///{tmp_path}/swarm.db"}
    nowhere = "http://127.0.0.1:9"
    made = run_cli(nowhere, "webhooks", "secret", "--tenant", "acme", **db)
    assert made.code == 0, made.text
    secret = made.out.strip()
    assert secret.startswith("whsec_") and "created" in made.err
    assert str(tmp_path / "swarm.db") in made.err
    shown = run_cli(nowhere, "webhooks", "secret", "--tenant", "acme", **db)
    assert shown.code == 0 and shown.out.strip() == secret
    rotated = run_cli(nowhere, "webhooks", "secret", "--tenant", "acme", "--rotate", **db)
    assert rotated.code == 0 and "rotated" in rotated.err
    assert rotated.out.strip().startswith("whsec_") and rotated.out.strip() != secret
    bad = run_cli(nowhere, "webhooks", "secret", "--tenant", " ", **db)
    assert bad.code == 2 and "tenant" in bad.err
    assert_plain(bad)
