"""swarmctl's JSON output gives dollars as the API does: to a billionth."""

from __future__ import annotations

import json

import pytest

from app.cli.main import _event_json, _print_json


def test_json_output_rounds_dollar_figures(capsys: pytest.CaptureFixture[str]) -> None:
    _print_json({"cost_usd": 0.05668380000000002, "agents": [{"cost_usd": 0.30000000000000004}]})
    out = capsys.readouterr().out
    assert "0.0566838," in out and "0.00000000000" not in out
    assert json.loads(out) == {"cost_usd": 0.0566838, "agents": [{"cost_usd": 0.3}]}


def test_event_lines_round_dollar_figures_and_keep_the_rest() -> None:
    raw = '{"seq": 4, "type": "agent.completed", "cost_usd": 8.820000000000001e-05}'
    assert json.loads(_event_json(raw)) == {
        "seq": 4,
        "type": "agent.completed",
        "cost_usd": 8.82e-05,
    }
    plain = '{"seq":1,"type":"job.queued"}'
    assert _event_json(plain) == plain
    # A rounded line is as compact as the service's own lines: one style for all.
    assert _event_json('{"seq":2,"cost_usd":0.30000000000000004}') == '{"seq":2,"cost_usd":0.3}'
