r"""Deterministic answer text and token estimates, derived only from the request's messages.

Tag: ``SIM-`` + the first 12 hex chars of sha256 over the canonical JSON of the messages list,
i.e. ``json.dumps(messages, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``
encoded as UTF-8. ``prompt_tag`` computes it, so tests can predict the answer's prefix.

Token estimate (no tokenizer, on purpose): per message ``ceil(chars / 4) + 4``, where chars is
the length of a string ``content``, or the summed length of the ``text`` of content parts
(other parts count their JSON length). Output tokens are whole pseudo-words, one token each;
the ``SIM-…:`` tag is framing and is not counted.

JSON mode (``response_format`` ``json_object`` or ``json_schema``) answers
``{"tag": ..., "summary": ...}``. Planner answers: in JSON mode only, when the text of any
message (a string ``content`` or the ``text`` of content parts) contains the whole word
``items`` (case-sensitive, e.g. ``{"items": [...]}`` or "a list of items"), the object gains
``"items": [...]``. Their number is ``min(N, 1000)`` for the first match of
``\b(\d{1,4})\s+items\b`` in the messages (``0 items`` gives ``[]``), else 3 to 8, fixed by
the prompt hash. Item ``i`` (from 0) is ``{"index": i, "title": <3-6 words>,
"question": <8-16 words>}``, its words fixed by the prompt hash and ``i``. Every title and
question word is one completion token, like a summary word; keys and indices are framing.
Under ``max_tokens`` the summary is cut first (as without items), then items are kept in
order while the whole item fits and the rest are dropped, so the answer stays valid JSON;
``finish_reason`` is then ``length``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

TAG_PREFIX = "SIM-"
TAG_HEX_CHARS = 12
TOKENS_PER_MESSAGE = 4
ITEMS_CAP = 1000
ITEMS_DEFAULT_RANGE = (3, 8)
TITLE_WORDS = (3, 6)
QUESTION_WORDS = (8, 16)

_ITEMS_WORD = re.compile(r"\bitems\b")
_ITEMS_COUNT = re.compile(r"\b(\d{1,4})\s+items\b")

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


def json_content(tag: str, words: list[str], items: Sequence[PlanItem] | None = None) -> str:
    """The JSON-mode answer; ``items`` (a list, possibly empty) only for planner answers."""
    answer: dict[str, Any] = {"tag": tag, "summary": " ".join(words)}
    if items is not None:
        answer["items"] = [item.as_dict() for item in items]
    return json.dumps(answer)


@dataclass(frozen=True, slots=True)
class PlanItem:
    """One planner sub-task: ``index``, title words and question words."""

    index: int
    title: list[str]
    question: list[str]

    @property
    def tokens(self) -> int:
        return len(self.title) + len(self.question)

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "title": " ".join(self.title),
            "question": " ".join(self.question),
        }


def _message_texts(messages: Sequence[Any]) -> list[str]:
    texts: list[str] = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else message
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    texts.append(part["text"])
    return texts


def _sub_digest(digest: bytes, label: bytes, index: int = 0) -> bytes:
    return hashlib.sha256(digest + label + index.to_bytes(4, "big")).digest()


def plan_items(messages: Sequence[Any], digest: bytes) -> list[PlanItem] | None:
    """The planner items for a JSON-mode answer, or None when no message mentions ``items``."""
    texts = _message_texts(messages)
    if not any(_ITEMS_WORD.search(t) for t in texts):
        return None
    count: int | None = None
    for t in texts:
        match = _ITEMS_COUNT.search(t)
        if match is not None:
            count = min(int(match.group(1)), ITEMS_CAP)
            break
    if count is None:
        count = target_length(_sub_digest(digest, b"items"), *ITEMS_DEFAULT_RANGE)
    items = []
    for i in range(count):
        title = _sub_digest(digest, b"title", i)
        question = _sub_digest(digest, b"question", i)
        items.append(
            PlanItem(
                i,
                words_for(title, target_length(title, *TITLE_WORDS)),
                words_for(question, target_length(question, *QUESTION_WORDS)),
            )
        )
    return items
