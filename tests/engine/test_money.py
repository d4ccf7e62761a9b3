"""Dollar figures: rounded to a billionth, half up, with the float noise gone."""

from __future__ import annotations

import math

from app.engine.money import round_usd, round_usd_fields


def test_float_noise_is_rounded_away() -> None:
    assert round_usd(0.05668380000000002) == 0.0566838
    assert round_usd(0.1 + 0.2) == 0.3
    assert repr(round_usd(3 * 0.6 / 1e6 * 147)) == "0.0002646"


def test_halves_round_up_never_down() -> None:
    assert round_usd(1.5e-9) == 2e-9 and round_usd(2.5e-9) == 3e-9
    assert round_usd(0.0000000014999) == 1e-9
    assert round_usd(12.3456789125) == 12.345678913
    for value in (0.0, 1.0, math.inf):
        assert round_usd(value) == value
    assert math.isnan(round_usd(math.nan))


def test_every_usd_field_is_rounded_in_nested_json() -> None:
    value = {
        "cost_usd": 0.05668380000000002,
        "budget_usd": None,
        "agents": [{"cost_usd": 1.00000000049, "latency_ms": 0.30000000000000004}],
        "usage": {"total_tokens": 3},
    }
    assert round_usd_fields(value) == {
        "cost_usd": 0.0566838,
        "budget_usd": None,
        "agents": [{"cost_usd": 1.0, "latency_ms": 0.30000000000000004}],
        "usage": {"total_tokens": 3},
    }
