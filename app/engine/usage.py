"""Token usage and cost: one type from the upstream's answer to the API's response.

A field is None where nothing reported it (an upstream that sends no usage, a model
without a price); adding keeps what is known, so a sum is None only when every part is.
The figures include estimates of attempts whose answer never arrived (a crash, a time-out,
a dropped connection, an abort); `estimated_tokens` and `estimated_cost_usd` say how much
of them is estimated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

_N = TypeVar("_N", int, float)


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cost_usd: float | None = None
    # Of the figures above, how much is an estimate rather than the upstream's report.
    estimated_tokens: int | None = None
    estimated_cost_usd: float | None = None
    # Of prompt_tokens, how many the provider served from its prompt cache (billed at the
    # model's cache-hit price); of completion_tokens, how many were reasoning.
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            _add(self.prompt_tokens, other.prompt_tokens),
            _add(self.completion_tokens, other.completion_tokens),
            _add(self.total_tokens, other.total_tokens),
            _add(self.cost_usd, other.cost_usd),
            _add(self.estimated_tokens, other.estimated_tokens),
            _add(self.estimated_cost_usd, other.estimated_cost_usd),
            _add(self.cached_tokens, other.cached_tokens),
            _add(self.reasoning_tokens, other.reasoning_tokens),
        )

    def __bool__(self) -> bool:
        """Whether anything was reported at all."""
        return any(getattr(self, f.name) is not None for f in fields(self))

    @property
    def estimated(self) -> bool:
        """Whether any of the figures is an estimate."""
        return bool(self.estimated_tokens) or bool(self.estimated_cost_usd)

    def priced(self, cost_usd: float | None) -> Usage:
        """These figures at ``cost_usd``; wholly estimated ones stay flagged as such."""
        priced = Usage(
            self.prompt_tokens,
            self.completion_tokens,
            self.total_tokens,
            cost_usd,
            cached_tokens=self.cached_tokens,
            reasoning_tokens=self.reasoning_tokens,
        )
        if self.estimated_tokens and self.estimated_tokens == self.total_tokens:
            return priced.as_estimate()
        return priced

    def as_estimate(self) -> Usage:
        """These figures, flagged as wholly estimated."""
        return Usage(
            self.prompt_tokens,
            self.completion_tokens,
            self.total_tokens,
            self.cost_usd,
            self.total_tokens,
            self.cost_usd,
            self.cached_tokens,
            self.reasoning_tokens,
        )

    @classmethod
    def from_columns(cls, values: Mapping[Any, Any]) -> Usage:
        """The inverse of `columns` (also how an attempt's estimate is kept as JSON)."""
        return cls(
            prompt_tokens=_int(values.get("prompt_tokens")),
            completion_tokens=_int(values.get("completion_tokens")),
            total_tokens=_int(values.get("total_tokens")),
            cost_usd=_float(values.get("cost_usd")),
            estimated_tokens=_int(values.get("estimated_tokens")),
            estimated_cost_usd=_float(values.get("estimated_cost_usd")),
            cached_tokens=_int(values.get("cached_tokens")),
            reasoning_tokens=_int(values.get("reasoning_tokens")),
        )

    def columns(self) -> dict[str, int | float | None]:
        """The agent row's columns these values go in."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def tokens(self) -> dict[str, int | None]:
        """The token counts alone, as events and responses show them."""
        shown: dict[str, int | None] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }
        # The parts the provider reported (cached input, reasoning), only where it did.
        if self.cached_tokens is not None:
            shown["cached_tokens"] = self.cached_tokens
        if self.reasoning_tokens is not None:
            shown["reasoning_tokens"] = self.reasoning_tokens
        return shown


def _add(a: _N | None, b: _N | None) -> _N | None:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)
