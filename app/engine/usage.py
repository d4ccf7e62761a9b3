"""Token usage and cost: one type from the upstream's answer to the API's response.

A field is None where nothing reported it (an upstream that sends no usage, a model
without a price); adding keeps what is known, so a sum is None only when every part is.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TypeVar

_N = TypeVar("_N", int, float)


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cost_usd: float | None = None

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            _add(self.prompt_tokens, other.prompt_tokens),
            _add(self.completion_tokens, other.completion_tokens),
            _add(self.total_tokens, other.total_tokens),
            _add(self.cost_usd, other.cost_usd),
        )

    def __bool__(self) -> bool:
        """Whether anything was reported at all."""
        return any(getattr(self, f.name) is not None for f in fields(self))

    def priced(self, cost_usd: float | None) -> Usage:
        return Usage(self.prompt_tokens, self.completion_tokens, self.total_tokens, cost_usd)

    def columns(self) -> dict[str, int | float | None]:
        """The agent row's columns these values go in."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def tokens(self) -> dict[str, int | None]:
        """The token counts alone, as events and responses show them."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


def _add(a: _N | None, b: _N | None) -> _N | None:
    if a is None:
        return b
    if b is None:
        return a
    return a + b
