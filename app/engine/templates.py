"""Prompt templates: finding ``{{context.KEY}}`` / ``{{agents.ID.output}}`` references and
rendering them (single pass, so substituted text is never expanded again).

Syntax
------
- ``{{context.KEY}}``: a value from the job's context. KEY may be a dotted path into nested
  objects (``{{context.doc.title}}``); each segment is a key without whitespace or dots.
- ``{{agents.ID.output}}``: the output of agent ID, which must be in the agent's depends_on.
- ``{{agents.ID.output.FIELD}}``: a value in ID's JSON answer (a dotted path; a number
  indexes a list), for an ID with response_format 'json' or a JSON Schema (against which
  the path is checked at submit). Strings verbatim, anything else as JSON.
- ``{{item}}`` / ``{{item.PATH}}``: in a map node's task only, the item its sub-agent works
  on (see ``MapItem``).
- Whitespace just inside the braces is allowed (``{{ context.x }}``).
- Any other ``{{…}}`` (not starting with ``context.`` or ``agents.``) is ordinary text and is
  left exactly as written, so prompts may contain braces. A ``{{…}}`` that starts with one of
  those prefixes (or ``item.``) but does not parse (``{{agents.x.outputs}}``,
  ``{{context.}}``) is malformed: job validation rejects it, and ``render`` leaves it as
  written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from app.engine.structured import MissingField, lookup_output

# The body may not contain braces: that keeps matching linear (each attempt stops at the next
# brace) and makes "{{{context.x}}}" match the inner reference rather than "{context.x".
_CANDIDATE_RE = re.compile(r"\{\{([^{}]*)\}\}")
_CONTEXT_SEGMENT_RE = re.compile(r"[^\s.]+")
_AGENT_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")

CONTEXT_PREFIX = "context."
AGENTS_PREFIX = "agents."
ITEM = "item"
ITEM_PREFIX = "item."
OUTPUT_SUFFIX = ".output"


class RefKind(StrEnum):
    """What a template reference points at."""

    context = "context"
    agent = "agent"
    item = "item"


@dataclass(frozen=True, slots=True)
class TemplateRef:
    """A well-formed reference found in a template.

    ``key`` is the dotted context path (``"doc.title"``) for ``RefKind.context``, the dotted
    path into the item for ``RefKind.item`` (``""`` for the whole item), or into the JSON
    answer for ``RefKind.agent`` (``None`` for the whole output), and ``agent_id`` the
    referenced agent for ``RefKind.agent``; the others are ``None``.
    ``span`` is ``(start, end)`` of ``raw`` (the whole ``{{…}}``) in the template.
    """

    kind: RefKind
    raw: str
    span: tuple[int, int]
    key: str | None = None
    agent_id: str | None = None

    @property
    def path(self) -> tuple[str, ...]:
        """The context or item path as segments (empty for agent references and for the
        whole item)."""
        return tuple(self.key.split(".")) if self.key else ()


@dataclass(frozen=True, slots=True)
class MalformedRef:
    """A ``{{…}}`` that starts with ``context.`` or ``agents.`` but does not parse."""

    raw: str
    span: tuple[int, int]
    reason: str


@dataclass(frozen=True, slots=True)
class DepOutput:
    """A finished dependency's result as seen by its dependents."""

    agent_id: str
    output: str | None
    failed: bool = False
    error: str | None = None


# The names a chunk of text answers to as {{item.NAME}}; {{item}} alone is its text.
CHUNK_FIELDS = ("index", "number", "count", "text", "start", "end")
# Position fields every item answers to (unless a list item has a key of that name).
POSITION_FIELDS = ("index", "number", "count")


@dataclass(frozen=True, slots=True)
class MapItem:
    """What one sub-agent of a map node works on: item ``index`` (0-based) of ``count``.

    ``value`` is a list element (any JSON value) or, for a chunk of text, the dict of
    ``CHUNK_FIELDS`` with ``chunk=True``. ``{{item}}`` renders a chunk's text, a string item
    verbatim and anything else as JSON; ``{{item.PATH}}`` looks PATH up in the value, and
    ``index`` / ``number`` (1-based) / ``count`` give the position when the value has no
    key of that name.
    """

    index: int
    count: int
    value: Any
    chunk: bool = False

    def lookup(self, path: Sequence[str]) -> Any:
        """The value at ``path`` (``()`` is the whole item); ``ContextPathError`` if absent."""
        if not path:
            return self.value["text"] if self.chunk else self.value
        value = self.value
        if (
            len(path) == 1
            and path[0] in POSITION_FIELDS
            and not (isinstance(value, Mapping) and path[0] in value)
        ):
            return {"index": self.index, "number": self.index + 1, "count": self.count}[path[0]]
        return lookup_context(value if isinstance(value, Mapping) else {}, path)

    def render(self, path: Sequence[str] = ()) -> str:
        return format_value(self.lookup(path))


class TemplateRenderError(LookupError):
    """A reference could not be filled: a missing context key or dependency output.

    Validation rules these out for a validated job, so this signals a caller bug.
    """


class ContextPathError(LookupError):
    """``path`` cannot be resolved in a context.

    ``depth`` is the index of the first segment that failed and ``container`` the value it was
    looked up in (a mapping without that key, or a non-mapping value).
    """

    def __init__(self, path: tuple[str, ...], depth: int, container: Any) -> None:
        self.path = path
        self.depth = depth
        self.container = container
        super().__init__(".".join(path))


def _parse(match: re.Match[str]) -> TemplateRef | MalformedRef | None:
    body = match.group(1).strip()
    raw = match.group(0)
    span = match.span()
    if body.startswith(CONTEXT_PREFIX):
        key = body[len(CONTEXT_PREFIX) :]
        segments = key.split(".")
        if all(_CONTEXT_SEGMENT_RE.fullmatch(s) for s in segments):
            return TemplateRef(RefKind.context, raw, span, key=key)
        return MalformedRef(
            raw,
            span,
            "context references look like {{context.KEY}} or {{context.KEY.SUBKEY}}, with "
            "non-empty keys without spaces",
        )
    if body == ITEM or body.startswith(ITEM_PREFIX):
        key = body[len(ITEM_PREFIX) :] if body != ITEM else ""
        if not key or all(_CONTEXT_SEGMENT_RE.fullmatch(s) for s in key.split(".")):
            return TemplateRef(RefKind.item, raw, span, key=key)
        return MalformedRef(
            raw,
            span,
            "item references look like {{item}} or {{item.FIELD}}, with non-empty fields "
            "without spaces",
        )
    if body.startswith(AGENTS_PREFIX):
        rest = body[len(AGENTS_PREFIX) :]
        agent_id, field = _agent_and_field(rest)
        if _AGENT_ID_RE.fullmatch(agent_id) and (
            field is None or all(_CONTEXT_SEGMENT_RE.fullmatch(s) for s in field.split("."))
        ):
            return TemplateRef(RefKind.agent, raw, span, key=field, agent_id=agent_id)
        return MalformedRef(
            raw,
            span,
            "agent references look like {{agents.ID.output}}, with ID an agent id, or "
            "{{agents.ID.output.FIELD}} (a dotted path into ID's JSON answer)",
        )
    return None


def _agent_and_field(rest: str) -> tuple[str, str | None]:
    """`ID.output` -> (ID, None); `ID.output.a.b` -> (ID, "a.b"). An id may hold dots, so
    the first ".output." after a valid id prefix is the seam."""
    if rest.endswith(OUTPUT_SUFFIX) and _AGENT_ID_RE.fullmatch(rest[: -len(OUTPUT_SUFFIX)]):
        return rest[: -len(OUTPUT_SUFFIX)], None
    seam = rest.find(OUTPUT_SUFFIX + ".")
    if seam <= 0:
        return "", None
    return rest[:seam], rest[seam + len(OUTPUT_SUFFIX) + 1 :]


def scan_refs(text: str) -> tuple[list[TemplateRef], list[MalformedRef]]:
    """All well-formed and all malformed references in ``text``, each in text order."""
    refs: list[TemplateRef] = []
    malformed: list[MalformedRef] = []
    for match in _CANDIDATE_RE.finditer(text):
        parsed = _parse(match)
        if isinstance(parsed, TemplateRef):
            refs.append(parsed)
        elif isinstance(parsed, MalformedRef):
            malformed.append(parsed)
    return refs, malformed


def find_refs(text: str) -> list[TemplateRef]:
    """The well-formed references in ``text``, in text order (malformed ones are skipped)."""
    return scan_refs(text)[0]


def find_malformed_refs(text: str) -> list[MalformedRef]:
    """The malformed references in ``text``, in text order."""
    return scan_refs(text)[1]


def lookup_context(context: Mapping[str, Any], path: Sequence[str]) -> Any:
    """The value at ``path`` in ``context``; raises ``ContextPathError`` if it is absent."""
    value: Any = context
    for depth, segment in enumerate(path):
        if not isinstance(value, Mapping) or segment not in value:
            raise ContextPathError(tuple(path), depth, value)
        value = value[segment]
    return value


def format_value(value: Any) -> str:
    """How a context value appears in a prompt: strings verbatim, anything else as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def format_dep_output(dep: DepOutput) -> str:
    """How a dependency's result appears in a prompt; a failure becomes a note."""
    if dep.failed:
        if dep.error:
            return f"[agent {dep.agent_id} failed: {dep.error}]"
        return f"[agent {dep.agent_id} failed]"
    return dep.output or ""


def render(
    text: str,
    *,
    context: Mapping[str, Any],
    outputs: Mapping[str, DepOutput],
    item: MapItem | None = None,
) -> str:
    """``text`` with every well-formed reference replaced, in a single pass.

    Substituted values are never scanned again, so a context value or an agent output that
    itself contains ``{{agents.y.output}}`` reaches the model literally. Context values that
    are not strings are rendered as JSON; a failed dependency renders as
    ``[agent ID failed: ERROR]``. Unrecognised and malformed ``{{…}}`` stay as written.

    Raises ``TemplateRenderError`` for a context path that is absent or an agent whose output
    is not in ``outputs``.
    """

    def substitute(match: re.Match[str]) -> str:
        ref = _parse(match)
        if not isinstance(ref, TemplateRef):
            return match.group(0)
        if ref.kind is RefKind.context:
            try:
                return format_value(lookup_context(context, ref.path))
            except ContextPathError as exc:
                raise TemplateRenderError(f"{ref.raw}: context has no value at {exc}") from exc
        if ref.kind is RefKind.item:
            if item is None:
                raise TemplateRenderError(f"{ref.raw}: only a map node's task has an item")
            try:
                return item.render(ref.path)
            except ContextPathError as exc:
                raise TemplateRenderError(f"{ref.raw}: the item has no value at {exc}") from exc
        assert ref.agent_id is not None
        dep = outputs.get(ref.agent_id)
        if dep is None:
            raise TemplateRenderError(f"{ref.raw}: no output recorded for agent {ref.agent_id!r}")
        if ref.key and not dep.failed:
            try:
                return format_value(lookup_output(dep.output or "", ref.path))
            except MissingField as exc:
                # Only fields the schema requires are sure to be there: say what is missing.
                return f"[{ref.raw[2:-2].strip()}: {exc}]"
        return format_dep_output(dep)

    return _CANDIDATE_RE.sub(substitute, text)


def render_system_prompt(text: str, *, context: Mapping[str, Any]) -> str:
    """Render a system prompt, which may reference the context but not agent outputs."""
    return render(text, context=context, outputs={})


def build_task_prompt(
    task: str,
    *,
    depends_on: Sequence[str],
    context: Mapping[str, Any],
    outputs: Mapping[str, DepOutput],
    item: MapItem | None = None,
) -> str:
    """The user message for an agent: its rendered task, plus its dependencies' outputs when
    the task does not place any of them itself.

    If ``depends_on`` is non-empty and ``task`` contains no ``{{agents.ID.output}}`` for an ID
    in it, the result is the rendered task, a blank line, and this block, with one entry per
    dependency in depends_on order::

        <dependency_outputs>
        <dependency id="extract_metadata">
        ...the output, verbatim...
        </dependency>
        <dependency id="extract_entities">
        [agent extract_entities failed: upstream timeout]
        </dependency>
        </dependency_outputs>

    i.e. ``rendered + "\\n\\n<dependency_outputs>\\n"`` then, per dependency,
    ``'<dependency id="ID">\\n' + body + "\\n</dependency>\\n"``, then
    ``"</dependency_outputs>"``. ``body`` is the output (empty if none) or, for a failed
    dependency, ``[agent ID failed: ERROR]`` (``[agent ID failed]`` without an error). Outputs
    are inserted verbatim, not escaped. If the task references at least one dependency,
    nothing is appended: the task author placed the outputs they want.

    A map node's sub-agent passes its ``item``; when the task references no ``{{item…}}``,
    ``'\n\n<item index="I" count="N">\n' + item + "\n</item>"`` is appended first (the
    item as ``{{item}}`` renders it).
    """
    rendered = render(task, context=context, outputs=outputs, item=item)
    refs = find_refs(task) if (depends_on or item is not None) else []
    if item is not None and not any(ref.kind is RefKind.item for ref in refs):
        rendered += (
            f'\n\n<item index="{item.index}" count="{item.count}">\n{item.render()}\n</item>'
        )
    if not depends_on:
        return rendered
    deps = set(depends_on)
    if any(ref.agent_id in deps for ref in refs if ref.kind is RefKind.agent):
        return rendered
    parts = [rendered, "\n\n<dependency_outputs>\n"]
    for dep_id in depends_on:
        dep = outputs.get(dep_id)
        if dep is None:
            raise TemplateRenderError(f"no output recorded for dependency {dep_id!r}")
        parts.append(f'<dependency id="{dep_id}">\n{format_dep_output(dep)}\n</dependency>\n')
    parts.append("</dependency_outputs>")
    return "".join(parts)
