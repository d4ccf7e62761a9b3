"""How much room a call's answer gets in the model's window: the bounded default when the
agent sets no `max_tokens`, the refusal before the call of a prompt that cannot fit, and
the larger room a truncated answer is asked again with."""

from __future__ import annotations

from dataclasses import dataclass

# The offline token estimate errs high (docs/chunking.md: up to about 1.55 times the real
# count for prose, code, JSON and European languages), so a prompt is refused before the
# call only when even this share of its estimate leaves no room: a prompt that may fit is
# always sent, and a real refusal by the upstream is then reported as such.
SURE_SHARE = 0.5
# Tokens the chat template adds around the messages (roles, separators).
TEMPLATE_TOKENS = 16
# The least an answer is ever given by default: smaller would be cut almost at once.
MIN_ANSWER_TOKENS = 64


@dataclass(frozen=True)
class NoRoom:
    """The prompt (with the agent's `max_tokens`, if set) cannot fit the window."""

    prompt_tokens: int
    max_tokens: int | None
    window: int


def sure_prompt_tokens(prompt_tokens: int) -> int:
    """The fewest tokens a prompt estimated at ``prompt_tokens`` can really cost."""
    return int(prompt_tokens * SURE_SHARE) + TEMPLATE_TOKENS


def answer_room(
    *, window: int | None, prompt_tokens: int, max_tokens: int | None, default_max_tokens: int
) -> int | NoRoom | None:
    """The `max_tokens` to send (None: send none), or `NoRoom`.

    ``prompt_tokens`` is the offline estimate of the messages; ``default_max_tokens`` the
    service's bound for an agent that sets none (0: no bound, the upstream's default)."""
    if window is None:
        return max_tokens if max_tokens is not None else (default_max_tokens or None)
    sure = sure_prompt_tokens(prompt_tokens)
    if max_tokens is not None:
        if sure + max_tokens > window:
            return NoRoom(prompt_tokens, max_tokens, window)
        return max_tokens
    if sure + MIN_ANSWER_TOKENS > window:
        return NoRoom(prompt_tokens, None, window)
    # Room by the estimate (which errs high), but never under the least useful answer.
    room = max(window - prompt_tokens - TEMPLATE_TOKENS, MIN_ANSWER_TOKENS)
    return min(room, default_max_tokens) if default_max_tokens else room


def more_room(*, window: int | None, prompt_tokens: int, max_tokens: int | None) -> int | None:
    """The `max_tokens` to ask again with after an answer was cut at ``max_tokens``: twice
    as much, within what the window holds by the estimate (which errs high, so the larger
    request is not refused for its size); None when no more can be given."""
    if max_tokens is None:
        return None
    ceiling = window - prompt_tokens - TEMPLATE_TOKENS if window is not None else None
    wanted = max_tokens * 2
    if ceiling is not None:
        wanted = min(wanted, ceiling)
    return wanted if wanted > max_tokens else None
