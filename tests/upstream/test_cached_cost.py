"""Cost as the provider bills it: cached input at the model's cache-hit price, reasoning
tokens reported apart, read from each provider's form of the usage."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types import CompletionUsage

from app.engine.usage import Usage
from app.upstream.client import reported_usage
from app.upstream.registry import BUILTIN_MODELS, ModelInfo


def usage_of(body: dict[str, Any]) -> Usage:
    return reported_usage(CompletionUsage.model_validate(body))


def test_openai_cached_and_reasoning_tokens_are_read() -> None:
    u = usage_of(
        {
            "prompt_tokens": 2000,
            "completion_tokens": 500,
            "total_tokens": 2500,
            "prompt_tokens_details": {"cached_tokens": 1536},
            "completion_tokens_details": {"reasoning_tokens": 320},
        }
    )
    assert (u.prompt_tokens, u.cached_tokens, u.reasoning_tokens) == (2000, 1536, 320)


def test_deepseek_cache_hit_tokens_are_read() -> None:
    u = usage_of(
        {
            "prompt_tokens": 1000,
            "completion_tokens": 10,
            "total_tokens": 1010,
            "prompt_cache_hit_tokens": 768,
            "prompt_cache_miss_tokens": 232,
        }
    )
    assert u.cached_tokens == 768 and u.reasoning_tokens is None


def test_no_details_means_unknown_and_nonsense_is_dropped() -> None:
    plain = usage_of({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15})
    assert plain.cached_tokens is None and plain.reasoning_tokens is None
    # A cached count larger than the prompt is not believable: it is capped at the prompt.
    odd = usage_of(
        {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "total_tokens": 15,
            "prompt_tokens_details": {"cached_tokens": 99},
        }
    )
    assert odd.cached_tokens == 10


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        # 1,000,000 prompt tokens of which 600,000 cached, 100,000 out.
        ("kimi-k2.5", 0.4 * 0.60 + 0.6 * 0.10 + 0.1 * 3.00),
        ("deepseek-v3.2", 0.4 * 0.28 + 0.6 * 0.028 + 0.1 * 0.42),
    ],
)
def test_cached_input_is_billed_at_the_cache_hit_price(model: str, expected: float) -> None:
    info = BUILTIN_MODELS[model]
    assert info.cost(1_000_000, 100_000, 600_000) == pytest.approx(expected)
    assert info.cost(1_000_000, 100_000, 600_000) < info.cost(1_000_000, 100_000)  # type: ignore[operator]


def test_without_a_cache_price_cached_tokens_cost_the_input_price() -> None:
    info = ModelInfo(name="m", input_usd_per_mtok=1.0, output_usd_per_mtok=2.0)
    assert info.cost(1_000_000, 0, 900_000) == pytest.approx(1.0)
