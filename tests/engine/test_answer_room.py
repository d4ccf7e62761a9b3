"""The room an answer gets in the model's window (pure arithmetic)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from app.engine.answer_room import (
    MIN_ANSWER_TOKENS,
    TEMPLATE_TOKENS,
    NoRoom,
    answer_room,
    more_room,
)


def test_without_a_window_the_agents_max_tokens_or_the_services_bound_is_sent() -> None:
    assert (
        answer_room(window=None, prompt_tokens=10**6, max_tokens=None, default_max_tokens=4096)
        == 4096
    )
    assert answer_room(window=None, prompt_tokens=10, max_tokens=50, default_max_tokens=4096) == 50
    assert answer_room(window=None, prompt_tokens=10, max_tokens=None, default_max_tokens=0) is None


def test_the_default_is_lowered_to_what_the_window_leaves_after_the_prompt() -> None:
    room = answer_room(window=4096, prompt_tokens=3000, max_tokens=None, default_max_tokens=4096)
    assert room == 4096 - 3000 - TEMPLATE_TOKENS
    big = answer_room(window=262_144, prompt_tokens=3000, max_tokens=None, default_max_tokens=4096)
    assert big == 4096
    # No bound set: generate to the window, not past it.
    assert answer_room(window=4096, prompt_tokens=96, max_tokens=None, default_max_tokens=0) == (
        4096 - 96 - TEMPLATE_TOKENS
    )


def test_a_prompt_whose_estimate_may_be_high_still_gets_a_useful_answer() -> None:
    """The estimate errs high: a prompt estimated at the whole window may really fit."""
    room = answer_room(window=4096, prompt_tokens=4096, max_tokens=None, default_max_tokens=4096)
    assert room == MIN_ANSWER_TOKENS


def test_a_prompt_that_cannot_fit_is_refused() -> None:
    refused = answer_room(window=4096, prompt_tokens=9000, max_tokens=None, default_max_tokens=4096)
    assert refused == NoRoom(9000, None, 4096)
    with_answer = answer_room(
        window=4096, prompt_tokens=2000, max_tokens=4000, default_max_tokens=0
    )
    assert with_answer == NoRoom(2000, 4000, 4096)
    # Explicit max_tokens that may fit is sent as asked.
    assert (
        answer_room(window=4096, prompt_tokens=2000, max_tokens=2000, default_max_tokens=0) == 2000
    )


@given(
    window=st.integers(1, 300_000),
    prompt=st.integers(0, 600_000),
    default=st.integers(0, 100_000),
)
def test_a_default_sent_never_asks_more_than_the_window(
    window: int, prompt: int, default: int
) -> None:
    room = answer_room(
        window=window, prompt_tokens=prompt, max_tokens=None, default_max_tokens=default
    )
    if isinstance(room, NoRoom):
        return
    assert room is not None and 1 <= room < window
    if default:
        assert room <= default
    assert room >= min(MIN_ANSWER_TOKENS, default or MIN_ANSWER_TOKENS)


def test_more_room_doubles_within_the_window() -> None:
    assert more_room(window=None, prompt_tokens=10, max_tokens=100) == 200
    assert more_room(window=1000, prompt_tokens=100, max_tokens=400) == 800
    assert more_room(window=1000, prompt_tokens=100, max_tokens=600) == 1000 - 100 - TEMPLATE_TOKENS
    assert more_room(window=1000, prompt_tokens=100, max_tokens=900) is None
    assert more_room(window=1000, prompt_tokens=100, max_tokens=None) is None
