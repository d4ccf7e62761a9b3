"""Text that every layer must be able to store and send.

A NUL (PostgreSQL's text type refuses it) or a lone UTF-16 surrogate (not encodable as
UTF-8, so neither storable nor sendable in a JSON request) can reach the service in an
upstream's answer or error message, decoded from JSON escapes. Such characters become
U+FFFD, so a stray character can never make a write or a dependent's request fail.
"""

from __future__ import annotations

import re

_UNSAFE = re.compile("[\\x00\\ud800-\\udfff]")


def clean_text(text: str) -> str:
    """`text` with every NUL and lone surrogate replaced by U+FFFD."""
    return _UNSAFE.sub("\ufffd", text) if _UNSAFE.search(text) else text


# A run of this many characters of a configured key is treated as the key: upstreams echo
# keys partly ("sk-abc…xyz", a prefix in a 401) or cut by a space, and an answer can quote
# it. Shorter runs would start to match ordinary text.
SECRET_FRAGMENT_CHARS = 8
REDACTED = "[redacted]"
# Characters that may be slipped inside a key without making it any less the key.
_GAPS = re.compile("[\\s\\u200b-\\u200d\\u2060\\ufeff]+")
_NOT_GAP = re.compile("[^\\s\\u200b-\\u200d\\u2060\\ufeff]")


def secret_fragments(secret: str) -> frozenset[str]:
    """The runs of ``secret`` whose presence in a text means the key leaked: the whole key,
    and every run of SECRET_FRAGMENT_CHARS characters that holds a digit or a capital.

    A run of lower-case letters and punctuation alone ("upstream", "sk-proj-") reads as
    ordinary text: masking it would blank common words wherever they appear, while in a
    random key nearly every run holds a digit or a capital (all but about 1 in 1,000 of a
    base62 key's, 1 in 2,500 of a hex key's).
    """
    compact = _GAPS.sub("", secret)
    n = SECRET_FRAGMENT_CHARS
    runs = {compact[i : i + n] for i in range(len(compact) - n + 1)}
    keyish = {run for run in runs if any(c.isdigit() or c.isupper() for c in run)}
    return frozenset(keyish | ({compact} if compact else set()))


def mask_fragments(text: str, fragments: frozenset[str]) -> str:
    """``text`` with every run that holds a fragment of a key (white space inside it
    ignored) replaced by ``[redacted]``. Text with no fragment costs one pass per fragment
    at C speed and comes back unchanged."""
    if not fragments or not text:
        return text
    compact = _GAPS.sub("", text)
    hits: list[tuple[int, int]] = []
    for fragment in fragments:
        start = compact.find(fragment)
        while start != -1:
            hits.append((start, start + len(fragment)))
            start = compact.find(fragment, start + 1)
    if not hits:
        return text
    # Where each character of `compact` is in `text`, to cut the gaps inside a run with it.
    positions = [m.start() for m in _NOT_GAP.finditer(text)]
    hits.sort()
    merged: list[list[int]] = []
    for start, end in hits:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    pieces: list[str] = []
    cursor = 0
    for start, end in merged:
        begin, finish = positions[start], positions[end - 1] + 1
        pieces.append(text[cursor:begin])
        pieces.append(REDACTED)
        cursor = finish
    pieces.append(text[cursor:])
    return "".join(pieces)


class SecretRegistry:
    """The configured upstream keys, masked (whole or in fragments) wherever they appear."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._fragments: frozenset[str] = frozenset()

    def add(self, secret: str | None) -> None:
        # Shorter "keys" are placeholders (local servers take any); masking them would
        # mangle ordinary words.
        if not secret or len(secret) < 4 or secret in self._secrets:
            return
        self._secrets.add(secret)
        self._fragments = self._fragments | secret_fragments(secret)

    def mask(self, text: str) -> str:
        return mask_fragments(text, self._fragments)


# One per process: the keys are read once from the environment at start-up.
SECRETS = SecretRegistry()
