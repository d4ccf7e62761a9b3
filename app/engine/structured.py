"""Structured output: the JSON Schema an agent's answer must match — checking the schema
itself, validating an answer against it, the words that ask a model to repair one, and
the fields a template may read from a JSON answer."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jsonschema import exceptions as schema_errors
from jsonschema import validators
from jsonschema_specifications import REGISTRY as META_SCHEMAS
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012, specification_with

# How many validation errors a repair request and a failure show: enough to fix the answer,
# few enough that a badly wrong one does not flood the prompt.
MAX_ERRORS_SHOWN = 8
# How much of an invalid answer a failure message quotes.
ANSWER_SHOWN_CHARS = 600
# Deeper schemas are refused at submit: validating one recurses once per level.
MAX_SCHEMA_DEPTH = 64
# The name sent upstream when the job gave none (OpenAI requires one: ^[a-zA-Z0-9_-]{1,64}$).
DEFAULT_SCHEMA_NAME = "output"


@dataclass(frozen=True)
class OutputSchema:
    """An agent's JSON Schema, in the one form the rest of the service uses."""

    schema: Mapping[str, Any] = field(hash=False)
    name: str = DEFAULT_SCHEMA_NAME
    strict: bool | None = None  # as the job set it; None: not sent

    def wire(self) -> dict[str, Any]:
        """OpenAI's `response_format.json_schema` object."""
        body: dict[str, Any] = {"name": self.name, "schema": dict(self.schema)}
        if self.strict is not None:
            body["strict"] = self.strict
        return body


def schema_problem(schema: Mapping[str, Any]) -> str | None:
    """Why `schema` is no valid JSON Schema (of the draft its `$schema` names, else
    2020-12) the service can use, or None. A `$ref` must point into the schema itself
    (`#…`): nothing is ever fetched."""
    shape = _shape_problem(schema)
    if shape is not None:
        return shape
    if not isinstance(schema.get("$schema", ""), str):
        return "$schema must be a string (the URI of a JSON Schema draft)"
    cls = validators.validator_for(schema, default=validators.Draft202012Validator)
    try:
        cls.check_schema(dict(schema))
    except schema_errors.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        return f"{exc.message}" + (f" (at {where})" if where else "")
    except Exception as exc:  # a schema odd enough to break the checker is no schema
        return f"it cannot be checked ({type(exc).__name__})"
    return _dangling_ref(schema, cls)


def _dangling_ref(schema: Mapping[str, Any], cls: Any) -> str | None:
    """The first `$ref` that points at nothing in the schema (else every answer would be
    refused, and paid for, at run time), or None."""
    refs: list[str] = []
    stack: list[Any] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, Mapping):
            ref = node.get("$ref")
            if isinstance(ref, str):
                refs.append(ref)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    if not refs:
        return None
    try:
        spec = specification_with(cls.META_SCHEMA.get("$schema", ""), default=DRAFT202012)
        resource = spec.create_resource(dict(schema))
        uri = resource.id() or ""
        resolver = META_SCHEMAS.with_resource(uri, resource).resolver(base_uri=uri)
    except Exception as exc:
        return f"its references cannot be resolved ({type(exc).__name__})"
    for ref in refs:
        try:
            resolver.lookup(ref)
        except Unresolvable:
            return f"$ref {ref[:100]!r} points at nothing in the schema"
        except Exception as exc:
            return f"$ref {ref[:100]!r} cannot be resolved ({type(exc).__name__})"
    return None


def _shape_problem(schema: Mapping[str, Any]) -> str | None:
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_SCHEMA_DEPTH:
            return f"the schema nests more than {MAX_SCHEMA_DEPTH} levels deep"
        if isinstance(node, Mapping):
            ref = node.get("$ref")
            if isinstance(ref, str) and not ref.startswith("#"):
                return f"$ref {ref[:100]!r} points outside the schema; only '#…' refs are used"
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return None


def _validator(schema: Mapping[str, Any]) -> Any:
    cls = validators.validator_for(schema, default=validators.Draft202012Validator)
    # The registry of meta-schemas only: a $ref is never fetched from anywhere.
    return cls(schema, registry=META_SCHEMAS)


def answer_errors(schema: Mapping[str, Any], answer: str) -> list[str]:
    """What is wrong with `answer` as JSON matching `schema`: [] when it matches."""
    try:
        value = json.loads(answer)
    except ValueError as exc:
        return [f"the answer is not JSON ({exc})"]
    try:
        found = sorted(
            _validator(schema).iter_errors(value),
            key=lambda e: (len(e.absolute_path), [str(p) for p in e.absolute_path]),
        )
    except Unresolvable as exc:
        # A '#…' ref to nothing: no answer can match, and asking again will not help.
        return [f"the schema cannot be used: {exc}"]
    except Exception as exc:  # the checker broke on this schema: no answer can pass it
        return [f"the schema cannot be used: {type(exc).__name__}: {exc}"[:300]]
    return [_describe(e) for e in found]


def _describe(error: schema_errors.ValidationError) -> str:
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return f"at $ {where}: {error.message}" if where else f"at $: {error.message}"


def shown(errors: Sequence[str]) -> str:
    listed = "; ".join(errors[:MAX_ERRORS_SHOWN])
    more = len(errors) - MAX_ERRORS_SHOWN
    return listed + (f"; and {more} more" if more > 0 else "")


def repair_request(errors: Sequence[str]) -> str:
    """The user message that asks the model to answer again after an invalid answer."""
    return (
        "Your answer does not match the required JSON Schema:\n- "
        + "\n- ".join(errors[:MAX_ERRORS_SHOWN])
        + "\nAnswer again with only the corrected JSON, matching the schema exactly."
    )


def schema_instruction(output: OutputSchema) -> str:
    """Added to the system message where the upstream has no strict JSON Schema mode (it is
    then asked for a JSON object, and told the schema here)."""
    text = json.dumps(dict(output.schema), ensure_ascii=False, separators=(",", ":"))
    return (
        "Answer with a single JSON value that matches this JSON Schema, and nothing else:\n" + text
    )


def invalid_answer(answer: str, errors: Sequence[str]) -> str:
    """The failure message of an agent out of attempts: why, and what came back."""
    quoted = answer if len(answer) <= ANSWER_SHOWN_CHARS else answer[:ANSWER_SHOWN_CHARS] + "…"
    return (
        f"the answer does not match the agent's response_format schema: {shown(errors)}. "
        f"It answered: {quoted}"
    )


# -- fields of a JSON answer in templates ({{agents.ID.output.FIELD}}) --------------------


class MissingField(LookupError):
    """A path that a JSON answer does not have."""


def lookup_output(output: str, path: Sequence[str]) -> Any:
    """The value at `path` in a JSON answer (a number indexes a list); MissingField if the
    answer is no JSON or has nothing there."""
    try:
        value: Any = json.loads(output)
    except ValueError as exc:
        raise MissingField("the output is not JSON") from exc
    for depth, segment in enumerate(path):
        if isinstance(value, Mapping) and segment in value:
            value = value[segment]
        elif isinstance(value, list) and segment.isdigit() and int(segment) < len(value):
            value = value[int(segment)]
        else:
            at = ".".join(path[: depth + 1])
            raise MissingField(f"the output has no value at {at}")
    return value


def path_problem(schema: Mapping[str, Any], path: Sequence[str]) -> str | None:
    """Why `path` can never be in an answer matching `schema`, or None. Only what the schema
    declares is judged: a segment is refused when its object lists `properties` without it
    and does not allow others (`additionalProperties` not set to allow them), or when it
    indexes something declared as no array."""
    node: Any = schema
    for depth, segment in enumerate(path):
        if not isinstance(node, Mapping):
            return None
        kind = node.get("type")
        props = node.get("properties")
        if isinstance(props, Mapping) and segment in props:
            node = props[segment]
            continue
        if segment.isdigit() and (kind == "array" or "items" in node):
            node = node.get("items")
            continue
        at = ".".join(path[: depth + 1])
        if kind is not None and kind != "object" and not isinstance(kind, list):
            owner = "the output" if depth == 0 else ".".join(path[:depth])
            return f"{at}: the schema makes {owner} of type {kind}, which has no fields"
        if isinstance(props, Mapping) and node.get("additionalProperties") in (None, False):
            fields = ", ".join(sorted(props)) or "none"
            return f"{at}: the schema declares no field {segment!r} (fields: {fields})"
        return None
    return None
