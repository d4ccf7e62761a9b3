"""Shared wording of problems shown to a caller: quoting what they sent, and "did you mean"."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

# How alike two words must be (difflib's ratio) for one to be offered for the other.
_CLOSE_ENOUGH = 0.6


def show(value: str, limit: int = 80) -> str:
    """``value`` quoted for a message; a pathological one is cut so it cannot bloat it."""
    return repr(value if len(value) <= limit else value[:limit] + "…")


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """``"; did you mean 'X'?"`` for the candidate closest to ``word``, or ``""``."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=_CLOSE_ENOUGH)
    return f"; did you mean {show(close[0])}?" if close else ""
