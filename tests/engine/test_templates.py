"""Template references: parsing, rendering, and the dependency-outputs block."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.engine.templates import (
    DepOutput,
    RefKind,
    TemplateRef,
    TemplateRenderError,
    build_task_prompt,
    find_malformed_refs,
    find_refs,
    render,
    render_system_prompt,
    scan_refs,
)


def ok(agent_id: str, output: str) -> DepOutput:
    return DepOutput(agent_id=agent_id, output=output)


# --- find_refs ---------------------------------------------------------------------------


def test_find_refs_kinds_keys_spans() -> None:
    text = "A {{context.doc.title}} B {{ agents.x-1.y.output }} C"
    refs = find_refs(text)
    assert refs == [
        TemplateRef(RefKind.context, "{{context.doc.title}}", (2, 23), key="doc.title"),
        TemplateRef(RefKind.agent, "{{ agents.x-1.y.output }}", (26, 51), agent_id="x-1.y"),
    ]
    assert refs[0].path == ("doc", "title")
    assert refs[1].path == ()
    for ref in refs:
        assert text[ref.span[0] : ref.span[1]] == ref.raw


@pytest.mark.parametrize(
    "text",
    [
        "{{ not a ref }}",
        "{{context}}",
        "{{agents}}",
        "{{Context.x}}",
        '{"a": {"b": 1}}',
        "{{}}",
        "{ {context.x} }",
        '{{ {"json": 1} }}',
        "{{contexts.x}}",
    ],
)
def test_non_references_are_ignored(text: str) -> None:
    assert scan_refs(text) == ([], [])


@pytest.mark.parametrize(
    "text",
    [
        "{{context.}}",
        "{{context..x}}",
        "{{context.a.}}",
        "{{context.a b}}",
        "{{agents.x.outputs}}",
        "{{agents.x}}",
        "{{agents..output}}",
        "{{agents.x.output.}}",
        "{{agents.x.output.a b}}",
        "{{agents.bad id.output}}",
        "{{agents." + "x" * 65 + ".output}}",
    ],
)
def test_malformed_references_detected(text: str) -> None:
    refs, malformed = scan_refs(text)
    assert refs == []
    assert [m.raw for m in malformed] == [text]
    assert malformed[0].span == (0, len(text))
    assert find_malformed_refs(text) == malformed


def test_triple_braces_match_the_inner_reference() -> None:
    assert [r.key for r in find_refs("{{{context.x}}}")] == ["x"]
    assert render("{{{context.x}}}", context={"x": "v"}, outputs={}) == "{v}"


def test_newlines_and_tabs_inside_braces() -> None:
    assert [r.key for r in find_refs("{{\n\tcontext.x\n}}")] == ["x"]


# --- render ------------------------------------------------------------------------------


def test_render_context_nested_and_whitespace() -> None:
    context = {"doc": {"title": "T", "meta": {"lang": "en"}}, "n": "plain"}
    text = "{{context.doc.title}}|{{ context.doc.meta.lang }}|{{  context.n}}"
    assert render(text, context=context, outputs={}) == "T|en|plain"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (3, "3"),
        (1.5, "1.5"),
        (True, "true"),
        (None, "null"),
        ([1, "a"], '[1, "a"]'),
        ({"k": "ü", "n": [1]}, '{"k": "ü", "n": [1]}'),
        ("ü {already} text", "ü {already} text"),
    ],
)
def test_render_non_string_values_as_json(value: Any, expected: str) -> None:
    assert render("{{context.v}}", context={"v": value}, outputs={}) == expected


def test_render_leaves_literal_braces_and_malformed_refs_alone() -> None:
    text = 'JSON: {"a": {{context.x}}} and {{ keep me }} and {{agents.x.outputs}} {{context}}'
    assert render(text, context={"x": 1}, outputs={}) == (
        'JSON: {"a": 1} and {{ keep me }} and {{agents.x.outputs}} {{context}}'
    )


def test_render_agent_output_and_failed_note() -> None:
    outputs = {
        "a": ok("a", "A-out"),
        "b": DepOutput("b", None, failed=True, error="upstream timeout"),
        "c": DepOutput("c", None, failed=True),
    }
    text = "{{agents.a.output}} / {{agents.b.output}} / {{agents.c.output}}"
    assert render(text, context={}, outputs=outputs) == (
        "A-out / [agent b failed: upstream timeout] / [agent c failed]"
    )


def test_render_never_expands_substituted_text() -> None:
    context = {"evil": "{{context.secret}} {{agents.b.output}}", "secret": "S"}
    outputs = {"a": ok("a", "{{context.secret}}"), "b": ok("b", "B")}
    text = "{{context.evil}}|{{agents.a.output}}"
    assert render(text, context=context, outputs=outputs) == (
        "{{context.secret}} {{agents.b.output}}|{{context.secret}}"
    )


def test_render_missing_values_raise() -> None:
    with pytest.raises(TemplateRenderError, match=r"doc\.title"):
        render("{{context.doc.title}}", context={"doc": {}}, outputs={})
    with pytest.raises(TemplateRenderError, match="'a'"):
        render("{{agents.a.output}}", context={}, outputs={})


def test_render_system_prompt() -> None:
    assert render_system_prompt("You are {{context.role}}.", context={"role": "X"}) == (
        "You are X."
    )


# --- build_task_prompt -------------------------------------------------------------------


def test_no_dependencies_just_renders() -> None:
    prompt = build_task_prompt("Do {{context.x}}", depends_on=[], context={"x": 1}, outputs={})
    assert prompt == "Do 1"


def test_block_appended_when_no_dependency_referenced() -> None:
    outputs = {
        "extract_metadata": ok("extract_metadata", '{"author": "A"}'),
        "extract_entities": DepOutput("extract_entities", None, failed=True, error="boom"),
    }
    prompt = build_task_prompt(
        "Merge these analyses about {{context.topic}}.",
        depends_on=["extract_metadata", "extract_entities"],
        context={"topic": "T"},
        outputs=outputs,
    )
    assert prompt == (
        "Merge these analyses about T.\n"
        "\n"
        "<dependency_outputs>\n"
        '<dependency id="extract_metadata">\n'
        '{"author": "A"}\n'
        "</dependency>\n"
        '<dependency id="extract_entities">\n'
        "[agent extract_entities failed: boom]\n"
        "</dependency>\n"
        "</dependency_outputs>"
    )


def test_block_follows_depends_on_order_not_outputs_order() -> None:
    outputs = {"b": ok("b", "B"), "a": ok("a", "A")}
    prompt = build_task_prompt("t", depends_on=["a", "b"], context={}, outputs=outputs)
    assert prompt.index('id="a"') < prompt.index('id="b"')


def test_block_omitted_when_any_dependency_referenced() -> None:
    outputs = {"a": ok("a", "A"), "b": ok("b", "B")}
    prompt = build_task_prompt(
        "Only {{agents.a.output}}", depends_on=["a", "b"], context={}, outputs=outputs
    )
    assert prompt == "Only A"


def test_block_appended_when_references_are_only_malformed() -> None:
    outputs = {"a": ok("a", "A")}
    prompt = build_task_prompt(
        "See {{agents.a.outputs}}", depends_on=["a"], context={}, outputs=outputs
    )
    assert prompt.startswith("See {{agents.a.outputs}}\n\n<dependency_outputs>\n")


def test_block_output_containing_template_syntax_is_not_expanded() -> None:
    outputs = {"a": ok("a", "{{context.secret}}")}
    prompt = build_task_prompt("t", depends_on=["a"], context={"secret": "S"}, outputs=outputs)
    assert prompt == (
        't\n\n<dependency_outputs>\n<dependency id="a">\n{{context.secret}}\n</dependency>\n'
        "</dependency_outputs>"
    )


def test_block_missing_output_raises() -> None:
    with pytest.raises(TemplateRenderError, match="'b'"):
        build_task_prompt("t", depends_on=["a", "b"], context={}, outputs={"a": ok("a", "")})


# --- properties --------------------------------------------------------------------------

_TEMPLATE_BITS = st.sampled_from(
    [
        "{{context.k0}}",
        "{{context.k1}}",
        "{{ context.nested.inner }}",
        "{{agents.a.output}}",
        "{{agents.b.output}}",
        "{{agents.zz.output}}",
        "{{context.}}",
        "{{",
        "}}",
        "{",
        "}",
        " ",
    ]
)
_VALUE_TEXT = st.lists(_TEMPLATE_BITS | st.text(max_size=5), max_size=8).map("".join)


@settings(max_examples=150, deadline=None)
@given(k0=_VALUE_TEXT, k1=_VALUE_TEXT, inner=_VALUE_TEXT, a_out=_VALUE_TEXT, b_out=_VALUE_TEXT)
def test_rendering_never_expands_substituted_values(
    k0: str, k1: str, inner: str, a_out: str, b_out: str
) -> None:
    context = {"k0": k0, "k1": k1, "nested": {"inner": inner}}
    outputs = {"a": ok("a", a_out), "b": ok("b", b_out)}
    template = "<{{context.k0}}|{{context.k1}}|{{context.nested.inner}}|"
    template += "{{agents.a.output}}|{{agents.b.output}}>"
    assert render(template, context=context, outputs=outputs) == (
        f"<{k0}|{k1}|{inner}|{a_out}|{b_out}>"
    )


@settings(max_examples=150, deadline=None)
@given(text=_VALUE_TEXT)
def test_spans_cover_raw_text(text: str) -> None:
    refs, malformed = scan_refs(text)
    for ref in refs:
        assert text[ref.span[0] : ref.span[1]] == ref.raw
    for bad in malformed:
        assert text[bad.span[0] : bad.span[1]] == bad.raw
