r"""Answers to a JSON Schema (``response_format`` ``json_schema``, or JSON mode with the
schema in a system message), deterministic for a prompt.

The schema is the request's ``response_format.json_schema.schema``; in JSON mode
(``json_object``) it is the last line of a system message that is a JSON object with a
``type``, ``properties`` or ``$schema`` key (how the service tells a schema to upstreams
without strict schemas); an object schema that declares nothing gets the JSON-mode
answer. Otherwise the answer is an instance built from the schema: ``const``, the
first of ``enum`` (picked by the prompt hash), the first branch of ``anyOf`` / ``oneOf`` /
``allOf``, every declared property of an object, ``minItems`` (at least 1) items of an
array, pseudo-words for a string (within ``minLength`` / ``maxLength``), numbers from the
prompt hash within ``minimum`` / ``maximum``. ``$ref``, ``pattern`` and ``format`` are
not followed.

Repair tests: a user message containing ``[sim:invalid-once]`` gets an invalid answer (the
first required property left out, or text that is no JSON) while the conversation holds
no assistant message, and a valid one once it does (the service's repair turn);
``[sim:invalid-always]`` is always answered invalidly.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from app.simulator.content import VOCABULARY, words_for

INVALID_ONCE = "[sim:invalid-once]"
INVALID_ALWAYS = "[sim:invalid-always]"
# A generated string's words when the schema does not bound its length.
STRING_WORDS = 4
# How deep an instance is built before nested schemas are answered with null.
MAX_DEPTH = 12


# Keys that leave an object schema open: such a schema gets the JSON-mode answer.
_OPEN_KEYS = frozenset({"type", "$schema", "title", "description", "additionalProperties"})


def schema_of(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The schema a request's answer should match, or None (none given, or an object
    schema that declares nothing, which the JSON-mode answer satisfies)."""
    schema = _given_schema(body)
    if schema is None or (schema.get("type") in (None, "object") and schema.keys() <= _OPEN_KEYS):
        return None
    return schema


def _given_schema(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    fmt = body.get("response_format")
    if not isinstance(fmt, Mapping):
        return None
    if fmt.get("type") == "json_schema":
        inner = fmt.get("json_schema")
        schema = inner.get("schema") if isinstance(inner, Mapping) else None
        return schema if isinstance(schema, Mapping) else None
    if fmt.get("type") == "json_object":
        for message in body.get("messages") or []:
            if not isinstance(message, Mapping) or message.get("role") != "system":
                continue
            content = message.get("content")
            if isinstance(content, str):
                found = _schema_line(content)
                if found is not None:
                    return found
    return None


def _schema_line(content: str) -> Mapping[str, Any] | None:
    for line in reversed(content.splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict) and {"type", "properties", "$schema"} & value.keys():
            return value
    return None


def wants_invalid(messages: Sequence[Any]) -> bool:
    users = [
        m.get("content")
        for m in messages
        if isinstance(m, Mapping) and m.get("role") == "user" and isinstance(m.get("content"), str)
    ]
    if any(INVALID_ALWAYS in str(u) for u in users):
        return True
    repaired = any(isinstance(m, Mapping) and m.get("role") == "assistant" for m in messages)
    return not repaired and any(INVALID_ONCE in str(u) for u in users)


def answer(schema: Mapping[str, Any], digest: bytes, *, invalid: bool = False) -> str:
    value = _instance(schema, digest, 0)
    if not invalid:
        return json.dumps(value, ensure_ascii=False)
    required = schema.get("required")
    if isinstance(value, dict) and isinstance(required, list) and required:
        value.pop(str(required[0]), None)
        return json.dumps(value, ensure_ascii=False)
    return "Sure! Here is the answer: " + json.dumps(value, ensure_ascii=False)


def _sub(digest: bytes, label: str) -> bytes:
    return hashlib.sha256(digest + label.encode()).digest()


def _instance(schema: Any, digest: bytes, depth: int) -> Any:
    if not isinstance(schema, Mapping) or depth > MAX_DEPTH:
        return None
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[digest[0] % len(enum)]
    for key in ("anyOf", "oneOf", "allOf"):
        branches = schema.get(key)
        if isinstance(branches, list) and branches:
            return _instance(branches[0], digest, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "object":
        props = schema.get("properties")
        if not isinstance(props, Mapping):
            return {}
        return {k: _instance(v, _sub(digest, k), depth + 1) for k, v in props.items()}
    if kind == "array":
        low = schema.get("minItems")
        count = max(low if isinstance(low, int) else 1, 1)
        high = schema.get("maxItems")
        if isinstance(high, int):
            count = min(count, high)
        item = schema.get("items")
        return [_instance(item, _sub(digest, f"[{i}]"), depth + 1) for i in range(count)]
    if kind in ("integer", "number"):
        low = schema.get("minimum", 0)
        high = schema.get("maximum", low + 100)
        low, high = int(low), int(high)
        return low + int.from_bytes(digest[:4], "big") % max(high - low + 1, 1)
    if kind == "boolean":
        return bool(digest[0] & 1)
    if kind == "null":
        return None
    # string
    words = " ".join(words_for(digest, STRING_WORDS))
    low = schema.get("minLength")
    high = schema.get("maxLength")
    if isinstance(low, int) and len(words) < low:
        words += "".join(VOCABULARY[b] for b in digest) * (low // 64 + 1)
        words = words[: max(low, 1)]
    if isinstance(high, int):
        words = words[:high]
    return words
