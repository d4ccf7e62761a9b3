"""Answers to a JSON Schema: valid, deterministic, in both ways a schema is given (strict
response_format, or JSON mode with the schema in the system message), and invalid on
purpose until repaired when the prompt asks for it."""

from __future__ import annotations

import json
from typing import Any

import jsonschema

from app.engine.structured import OutputSchema, schema_instruction
from tests.simulator.conftest import Sim

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "kind": {"enum": ["invoice", "contract", "email"]},
        "total": {"type": "number", "minimum": 10, "maximum": 20},
        "count": {"type": "integer"},
        "urgent": {"type": "boolean"},
        "parties": {"type": "array", "items": {"type": "string", "maxLength": 8}, "minItems": 2},
        "ref": {"type": ["string", "null"], "minLength": 70},
        "fixed": {"const": "v1"},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
    "required": ["kind", "total", "parties"],
    "additionalProperties": False,
}
STRICT = {"type": "json_schema", "json_schema": {"name": "doc", "schema": SCHEMA, "strict": True}}


async def ask(sim: Sim, messages: list[dict[str, str]], response_format: Any) -> str:
    result = await sim.client().chat.completions.create(
        model="m", messages=messages, response_format=response_format
    )
    content = result.choices[0].message.content
    assert content is not None
    return content


async def test_a_strict_schema_is_answered_with_a_matching_instance(sim: Sim) -> None:
    messages = [{"role": "user", "content": "Read document 1."}]
    answer = await ask(sim, messages, STRICT)
    jsonschema.validate(json.loads(answer), SCHEMA)
    assert await ask(sim, messages, STRICT) == answer  # the same prompt, the same answer
    other = await ask(sim, [{"role": "user", "content": "Read document 2."}], STRICT)
    jsonschema.validate(json.loads(other), SCHEMA)


async def test_json_mode_follows_a_schema_told_in_the_system_message(sim: Sim) -> None:
    system = "You read documents.\n\n" + schema_instruction(OutputSchema(SCHEMA))
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "Read it."}]
    answer = await ask(sim, messages, {"type": "json_object"})
    jsonschema.validate(json.loads(answer), SCHEMA)


async def test_invalid_once_is_repaired_by_the_next_turn_and_invalid_always_is_not(
    sim: Sim,
) -> None:
    first = [{"role": "user", "content": "Read it. [sim:invalid-once]"}]
    bad = await ask(sim, first, STRICT)
    assert "kind" not in json.loads(bad)  # the first required property left out
    repair = [
        *first,
        {"role": "assistant", "content": bad},
        {"role": "user", "content": "Your answer does not match…"},
    ]
    jsonschema.validate(json.loads(await ask(sim, repair, STRICT)), SCHEMA)
    always = [{"role": "user", "content": "Read it. [sim:invalid-always]"}]
    again = [*always, {"role": "assistant", "content": "x"}, {"role": "user", "content": "fix"}]
    assert "kind" not in json.loads(await ask(sim, again, STRICT))
