"""The pure parts of structured output: checking a schema, validating an answer, reading
a field of a JSON answer, and judging a template's field path against a schema."""

from __future__ import annotations

from typing import Any

import pytest

from app.engine.structured import (
    MAX_ERRORS_SHOWN,
    MissingField,
    answer_errors,
    invalid_answer,
    lookup_output,
    path_problem,
    repair_request,
    schema_problem,
)
from app.engine.templates import DepOutput, RefKind, render, scan_refs

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "object", "properties": {"k": {}}}},
        "meta": {"type": "object", "additionalProperties": True, "properties": {"a": {}}},
        "free": {},
    },
    "required": ["title"],
}


def test_valid_schemas_pass_and_invalid_ones_say_where() -> None:
    assert schema_problem(SCHEMA) is None
    assert schema_problem({"$schema": "http://json-schema.org/draft-07/schema#"}) is None
    problem = schema_problem({"type": "object", "properties": {"a": {"type": 5}}})
    assert problem is not None and "properties/a/type" in problem
    assert schema_problem({"required": "title"}) is not None
    assert "$schema must be a string" in str(schema_problem({"$schema": {}}))
    assert schema_problem({"type": "string", "pattern": "("}) == "'(' is not a 'regex' (at pattern)"


def test_answers_are_checked_as_json_then_against_the_schema() -> None:
    assert answer_errors(SCHEMA, '{"title": "x", "tags": [{"k": 1}]}') == []
    assert answer_errors(SCHEMA, "not json")[0].startswith("the answer is not JSON")
    errors = answer_errors(SCHEMA, '{"tags": [5]}')
    assert errors == [
        "at $: 'title' is a required property",
        "at $ .tags[0]: 5 is not of type 'object'",
    ]


def test_repair_and_failure_messages_are_bounded() -> None:
    errors = [f"error {i}" for i in range(20)]
    assert repair_request(errors).count("\n- ") == MAX_ERRORS_SHOWN
    message = invalid_answer("x" * 5000, errors)
    assert "and 12 more" in message and message.endswith("…") and len(message) < 1000


def test_fields_of_an_answer_are_looked_up_by_dotted_path() -> None:
    answer = '{"a": {"b": [10, {"c": "deep"}]}}'
    assert lookup_output(answer, ["a", "b", "1", "c"]) == "deep"
    assert lookup_output(answer, ["a", "b", "0"]) == 10
    with pytest.raises(MissingField, match=r"no value at a\.x"):
        lookup_output(answer, ["a", "x"])
    with pytest.raises(MissingField, match="not JSON"):
        lookup_output("plain", ["a"])


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        (["title"], None),
        (["tags", "0", "k"], None),
        (["meta", "anything"], None),  # additionalProperties allows it
        (["free", "x", "y"], None),  # nothing declared below: not judged
        (["titel"], "declares no field 'titel' (fields: free, meta, tags, title)"),
        (["title", "x"], "makes title of type string"),
        (["tags", "0", "z"], "declares no field 'z' (fields: k)"),
    ],
)
def test_field_paths_are_judged_by_what_the_schema_declares(
    path: list[str], problem: str | None
) -> None:
    found = path_problem(SCHEMA, path)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_field_references_parse_and_render() -> None:
    refs, malformed = scan_refs(
        "{{agents.a.b.output.x.0}} {{agents.a.output}} {{agents.q.output.}}"
    )
    assert [(r.kind, r.agent_id, r.key) for r in refs] == [
        (RefKind.agent, "a.b", "x.0"),
        (RefKind.agent, "a", None),
    ]
    assert len(malformed) == 1
    outputs = {
        "a.b": DepOutput("a.b", '{"x": ["first", 2]}'),
        "f": DepOutput("f", None, failed=True, error="boom"),
    }
    text = "{{agents.a.b.output.x.0}}/{{agents.a.b.output.x}}/{{agents.f.output.x}}"
    assert render(text, context={}, outputs=outputs) == 'first/["first", 2]/[agent f failed: boom]'


def test_refs_are_local_only_and_depth_is_bounded() -> None:
    assert "points outside the schema" in str(schema_problem({"$ref": "http://198.51.100.7/s"}))
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(100):
        node["items"] = {}
        node = node["items"]
    assert "nests more than" in str(schema_problem(deep))
    local = {"$defs": {"a": {"type": "string"}}, "properties": {"x": {"$ref": "#/$defs/a"}}}
    assert schema_problem(local) is None
    assert answer_errors(local, '{"x": 1}') == ["at $ .x: 1 is not of type 'string'"]
    dangling = {"properties": {"x": {"$ref": "#/$defs/nope"}}}
    assert answer_errors(dangling, '{"x": 1}')[0].startswith("the schema cannot be used")


@pytest.mark.parametrize(
    ("schema", "ref"),
    [
        ({"$ref": "#/$defs/missing"}, "#/$defs/missing"),
        ({"$defs": {"a": {}}, "properties": {"x": {"$ref": "#/$defs/b"}}}, "#/$defs/b"),
        ({"$defs": {"a": {"$anchor": "here"}}, "items": {"$ref": "#there"}}, "#there"),
        (
            {
                "$schema": "http://json-schema.org/draft-07/schema#",
                "definitions": {"a": {}},
                "items": {"$ref": "#/definitions/b"},
            },
            "#/definitions/b",
        ),
    ],
)
def test_a_ref_that_points_at_nothing_is_refused_at_submit(
    schema: dict[str, Any], ref: str
) -> None:
    # Accepted, it would fail every answer at run time, each attempt paid for.
    assert schema_problem(schema) == f"$ref {ref!r} points at nothing in the schema"


def test_refs_that_resolve_are_accepted() -> None:
    assert schema_problem({"$defs": {"a": {"$anchor": "here"}}, "items": {"$ref": "#here"}}) is None
    assert schema_problem({"items": {"$ref": "#"}}) is None
    assert (
        schema_problem(
            {
                "$schema": "http://json-schema.org/draft-07/schema#",
                "definitions": {"a": {"type": "integer"}},
                "items": {"$ref": "#/definitions/a"},
            }
        )
        is None
    )
