"""Recognises an upstream's "the request does not fit the model's context" refusal, in the
shapes the servers we meet give it, and reads the figures it states.

Structured fields are preferred (llama.cpp's ``type`` with ``n_ctx`` and
``n_prompt_tokens``; OpenAI's ``code``). vLLM, DeepSeek and Moonshot answer a plain 400 with
no distinguishing code, so for them the only signal is the sentence they always use; those
sentences are matched here, in one place, and nowhere else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# Codes and types that name the refusal outright.
_CODES = frozenset({"context_length_exceeded", "string_above_max_length"})
_TYPES = frozenset({"exceed_context_size_error", "context_length_exceeded"})

# The sentences of servers whose 400 carries no code of its own.
_SENTENCES = re.compile(
    r"maximum context length is|"  # OpenAI, vLLM, DeepSeek and most compatible servers
    r"exceeds the available context size|"  # llama.cpp
    r"exceeded model token limit|"  # Moonshot (Kimi)
    r"longer than the maximum model length|"  # vLLM: "The decoder prompt (length N) is …"
    r"prompt is too long|"  # Anthropic
    r"context (?:window|length) exceeded",
    re.IGNORECASE,
)

# The model's limit as each states it.
_LIMIT = re.compile(
    r"maximum context length is (\d[\d,]*)|"
    r"available context size \((\d[\d,]*) tokens\)|"
    r"model token limit:? (\d[\d,]*)|"
    r"maximum model length (?:of )?(\d[\d,]*)|"
    r"> ?(\d[\d,]*) maximum|"
    r"context (?:window|length) (?:of|is) (\d[\d,]*)",
    re.IGNORECASE,
)
# What the upstream counted for the prompt alone.
_PROMPT = re.compile(
    r"(\d[\d,]*) in the messages|"  # "(100 in the messages, 300 in the completion)"
    r"your messages resulted in (\d[\d,]*) tokens|"  # OpenAI
    r"your request has (\d[\d,]*) input tokens|"  # vLLM >= 0.10
    r"request \((\d[\d,]*) tokens\) exceeds|"  # llama.cpp
    r"prompt \(length (\d[\d,]*)\)|"  # vLLM's decoder prompt
    r"prompt is too long: (\d[\d,]*) tokens",  # Anthropic
    re.IGNORECASE,
)
_COMPLETION = re.compile(r"(\d[\d,]*) in the completion", re.IGNORECASE)


@dataclass(frozen=True)
class ContextRefusal:
    """What the upstream said about a request too long for its window (None: not said)."""

    limit: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


def context_refusal(status: int, error: Any, message: str) -> ContextRefusal | None:
    """The refusal ``error`` (the body's ``error`` object, or the body) states, or None when
    the answer is not a context-length refusal. ``message`` is the upstream's message."""
    fields = error if isinstance(error, dict) else {}
    code, kind = fields.get("code"), fields.get("type")
    named = (isinstance(code, str) and code in _CODES) or (isinstance(kind, str) and kind in _TYPES)
    if not named and not (status in (400, 413, 422) and _SENTENCES.search(message)):
        return None
    return ContextRefusal(
        limit=_count(fields.get("n_ctx")) or _first(_LIMIT, message),
        prompt_tokens=_count(fields.get("n_prompt_tokens")) or _first(_PROMPT, message),
        completion_tokens=_first(_COMPLETION, message),
    )


def _first(pattern: re.Pattern[str], text: str) -> int | None:
    match = pattern.search(text)
    if match is None:
        return None
    digits = next(g for g in match.groups() if g is not None).replace(",", "")
    return _count(int(digits)) if digits.isdigit() else None


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value
