"""The model registry: which provider serves a model, what it costs, how much it can take.

Built-in defaults cover the models the product is used with most; prices are list prices
in USD per million tokens (cache-miss input), taken from each vendor's public pricing page.
An unknown model has no price, and its cost is reported as null rather than 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelInfo:
    name: str
    input_usd_per_mtok: float | None = None
    output_usd_per_mtok: float | None = None
    context_window: int | None = None
    # Extra fields merged into every request body for this model (e.g. a thinking switch).
    extra_body: dict[str, Any] = field(default_factory=dict)

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> float | None:
        if (
            self.input_usd_per_mtok is None
            or self.output_usd_per_mtok is None
            or prompt_tokens is None
            or completion_tokens is None
        ):
            return None
        return (
            prompt_tokens * self.input_usd_per_mtok + completion_tokens * self.output_usd_per_mtok
        ) / 1_000_000


BUILTIN_MODELS: dict[str, ModelInfo] = {
    m.name: m
    for m in (
        # Moonshot platform pricing (Kimi K2.5).
        ModelInfo("kimi-k2.5", 0.60, 3.00, 262_144),
        # DeepSeek API pricing for V3.2 (the seed article's $0.42 output price).
        ModelInfo("deepseek-v3.2", 0.28, 0.42, 131_072),
        # OpenAI API pricing.
        ModelInfo("gpt-4.1", 2.00, 8.00, 1_047_576),
        # Anthropic API pricing (prompts up to 200k tokens).
        ModelInfo("claude-sonnet-4.5", 3.00, 15.00, 200_000),
        # Google Gemini API pricing (text input).
        ModelInfo("gemini-2.5-flash", 0.30, 2.50, 1_048_576),
    )
}


class ModelRegistry:
    def __init__(self, models: dict[str, ModelInfo] | None = None) -> None:
        self._models = dict(BUILTIN_MODELS if models is None else models)

    def get(self, name: str) -> ModelInfo:
        return self._models.get(name) or ModelInfo(name)

    def names(self) -> list[str]:
        return sorted(self._models)
