"""Deterministic answer text and token estimates, derived only from the request's messages.

Tag: ``SIM-`` + the first 12 hex chars of sha256 over the canonical JSON of the messages list,
i.e. ``json.dumps(messages, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``
encoded as UTF-8. ``prompt_tag`` computes it, so tests can predict the answer's prefix.

Token estimate (no tokenizer, on purpose): per message ``ceil(chars / 4) + 4``, where chars is
the length of a string ``content``, or the summed length of the ``text`` of content parts
(other parts count their JSON length). Output tokens are whole pseudo-words, one token each;
the ``SIM-…:`` tag is framing and is not counted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

TAG_PREFIX = "SIM-"
TAG_HEX_CHARS = 12
TOKENS_PER_MESSAGE = 4

# 256 two-syllable pseudo-words, so one hash byte picks one word.
_SYLLABLES: tuple[str, ...] = ("ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ba", "de", "fi")
_SYLLABLES += ("go", "hu", "ja", "pe", "zo")  # split only to fit the line; 16 in all
VOCABULARY: tuple[str, ...] = tuple(a + b for a in _SYLLABLES for b in _SYLLABLES)


def canonical_messages(messages: Any) -> bytes:
    """The exact bytes that are hashed for the tag."""
    return json.dumps(messages, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def messages_digest(messages: Any) -> bytes:
    return hashlib.sha256(canonical_messages(messages)).digest()


def prompt_tag(messages: Any) -> str:
    """``SIM-<12 hex>`` for a messages list (as sent in the request body)."""
    return TAG_PREFIX + messages_digest(messages).hex()[:TAG_HEX_CHARS]


def _content_chars(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                total += len(part["text"])
            else:
                total += len(json.dumps(part))
        return total
    return len(json.dumps(content))


def estimate_prompt_tokens(messages: Sequence[Any]) -> int:
    total = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else message
        total += -(-_content_chars(content) // 4) + TOKENS_PER_MESSAGE
    return total


def target_length(digest: bytes, low: int, high: int) -> int:
    """Output length in [low, high], fixed by the prompt hash (not by the seed)."""
    return low + int.from_bytes(digest[:4], "big") % (high - low + 1)


def words_for(digest: bytes, count: int) -> list[str]:
    """``count`` pseudo-words; a prefix of a longer answer to the same prompt."""
    if count <= 0:
        return []
    stream = hashlib.shake_256(digest).digest(count)
    vocab = VOCABULARY
    return [vocab[b] for b in stream]


def plain_content(tag: str, words: list[str]) -> str:
    return f"{tag}: {' '.join(words)}"


def json_content(tag: str, words: list[str]) -> str:
    return json.dumps({"tag": tag, "summary": " ".join(words)})
