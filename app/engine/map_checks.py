"""Map nodes at submit: what each fans out over (``MapPlan``) and the checks of its source,
chunking options and items."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app.engine.chunking import count_chunks
from app.engine.problems import Loc, Problems, ProblemType, context_miss, json_kind, show
from app.engine.spec import DEFAULT_CHUNK_TOKENS, AgentSpec, JobSpec, ResponseFormat
from app.engine.templates import (
    AGENTS_PREFIX,
    CHUNK_FIELDS,
    CONTEXT_PREFIX,
    OUTPUT_SUFFIX,
    POSITION_FIELDS,
    ContextPathError,
    RefKind,
    lookup_context,
    scan_refs,
)


@dataclass(frozen=True, slots=True)
class MapPlan:
    """A validated map node: what it fans out over and its limits.

    ``source_agent`` is set for ``over: agents.ID.output`` (and ``context_path`` is empty);
    otherwise ``context_path`` names the context value. ``known_items`` is the fan-out when it
    could be counted at submit (context text or list), else ``None``. ``item_paths`` are the
    ``{{item.PATH}}`` paths the task uses (position fields left out): every item of a
    planner's list must have them.
    """

    node: str
    context_path: tuple[str, ...]
    source_agent: str | None
    source_is_map: bool
    chunk_tokens: int
    overlap_tokens: int
    max_items: int
    known_items: int | None
    item_paths: tuple[tuple[str, ...], ...]


def mappable_items(value: Any) -> list[Any] | None:
    """The items of a JSON value a map fans out over: a list, or an object's 'items' list."""
    if isinstance(value, list):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("items"), list):
        return list(value["items"])
    return None


def item_paths(task: str) -> tuple[tuple[str, ...], ...]:
    """The ``{{item.PATH}}`` paths of a map task that an item must have (not positions)."""
    paths: dict[tuple[str, ...], None] = {}
    for ref in scan_refs(task)[0]:
        if (
            ref.kind is RefKind.item
            and ref.path
            and not (len(ref.path) == 1 and ref.path[0] in POSITION_FIELDS)
        ):
            paths[ref.path] = None
    return tuple(paths)


def missing_item_path(item: Any, paths: Sequence[tuple[str, ...]]) -> tuple[str, ...] | None:
    """The first of ``paths`` that ``item`` does not have, or None."""
    for path in paths:
        try:
            lookup_context(item if isinstance(item, Mapping) else {}, path)
        except ContextPathError:
            return path
    return None


def check_map(
    i: int,
    agent: AgentSpec,
    spec: JobSpec,
    index: Mapping[str, int],
    service_max: int,
    problems: Problems,
) -> MapPlan | None:
    m = agent.map
    assert m is not None
    loc: Loc = ("body", "agents", i, "map")
    who = f"map node {show(agent.id)}"
    limit = min(m.max_items or service_max, service_max)
    over = m.over.strip()
    if over.startswith("{{") and over.endswith("}}"):
        over = over[2:-2].strip()
    paths = item_paths(agent.task)
    is_text_options = m.chunk_tokens is not None or m.overlap_tokens is not None

    def plan(**kw: Any) -> MapPlan:
        base: dict[str, Any] = {
            "node": agent.id,
            "context_path": (),
            "source_agent": None,
            "source_is_map": False,
            "chunk_tokens": m.chunk_tokens or DEFAULT_CHUNK_TOKENS,
            "overlap_tokens": m.overlap_tokens or 0,
            "max_items": limit,
            "known_items": None,
            "item_paths": paths,
        }
        base.update(kw)
        return MapPlan(**base)

    def too_many(n: str, what: str) -> None:
        problems.add(
            loc,
            f"{who} would fan out to {n} sub-agents ({what}); at most {limit:,} are allowed"
            + (" (map.max_items)" if m.max_items and m.max_items < service_max else "")
            + (
                "; raise chunk_tokens"
                if what.startswith("chunks")
                else "; split the list over several map nodes"
            ),
            ProblemType.map_too_many_items,
        )

    if over.startswith(AGENTS_PREFIX) and over.endswith(OUTPUT_SUFFIX):
        source = over[len(AGENTS_PREFIX) : -len(OUTPUT_SUFFIX)]
        if source == agent.id:
            problems.add(
                (*loc, "over"), f"{who} maps over its own output", ProblemType.map_bad_source
            )
            return None
        if source not in index:
            if source in agent.depends_on:
                return None  # reported as an unknown dependency already
            problems.add(
                (*loc, "over"),
                f"{who} maps over {show(m.over)}, but there is no agent {show(source)}"
                + problems.suggest(source, index),
                ProblemType.map_bad_source,
            )
            return None
        if source not in agent.depends_on:
            problems.add(
                (*loc, "over"),
                f"{who} maps over {show(m.over)}, but {show(source)} is not in its "
                f"depends_on; add {show(source)} to depends_on",
                ProblemType.undeclared_dependency,
            )
            return None
        src = spec.agents[index[source]]
        if is_text_options:
            problems.add(
                loc,
                f"{who}: chunk_tokens and overlap_tokens apply to text in the context; the "
                f"output of {show(source)} is a list",
                ProblemType.map_chunking_not_text,
            )
        if src.map is None and spec.resolve(src).response_format is not ResponseFormat.json:
            problems.add(
                (*loc, "over"),
                f"{who} maps over the output of {show(source)}, which must then be JSON: set "
                f'"response_format": "json" on {show(source)} and have it answer a list '
                'or {"items": [...]}',
                ProblemType.map_source_not_json,
            )
            return None
        return plan(source_agent=source, source_is_map=src.map is not None)

    if not over.startswith(CONTEXT_PREFIX) or not over[len(CONTEXT_PREFIX) :]:
        problems.add(
            (*loc, "over"),
            f"{who} maps over {show(m.over)}; 'over' must be 'context.KEY' (text or a list "
            "in the context) or 'agents.ID.output' (a dependency's JSON list)",
            ProblemType.map_bad_source,
        )
        return None
    path = tuple(over[len(CONTEXT_PREFIX) :].split("."))
    try:
        value = lookup_context(spec.context, path)
    except ContextPathError as exc:
        problems.add(
            (*loc, "over"),
            f"{who} maps over {show(m.over)}, but " + context_miss(exc, problems),
            ProblemType.missing_context,
        )
        return None
    if isinstance(value, str):
        chunk_tokens = m.chunk_tokens or DEFAULT_CHUNK_TOKENS
        overlap = m.overlap_tokens or 0
        if overlap >= chunk_tokens:
            problems.add(
                (*loc, "overlap_tokens"),
                f"{who}: overlap_tokens ({overlap}) must be less than chunk_tokens "
                f"({chunk_tokens})",
                ProblemType.map_overlap_too_large,
            )
            return None
        for ref_path in paths:
            if len(ref_path) != 1 or ref_path[0] not in CHUNK_FIELDS:
                problems.add(
                    ("body", "agents", i, "task"),
                    f"{who} maps over text, whose chunks have no field "
                    f"{show('.'.join(ref_path))}; use {{{{item}}}} or one of "
                    + ", ".join(f"{{{{item.{f}}}}}" for f in CHUNK_FIELDS),
                    ProblemType.unknown_item_field,
                )
                return None
        # Counting stops past the limit: a huge text with tiny chunks is refused quickly.
        n = count_chunks(value, chunk_tokens=chunk_tokens, overlap_tokens=overlap, limit=limit)
        if n > limit:
            too_many(f"more than {limit:,}", f"chunks of {chunk_tokens:,} tokens")
        return plan(context_path=path, known_items=n)
    items = mappable_items(value)
    if items is None:
        problems.add(
            (*loc, "over"),
            f"{who} maps over {show(m.over)}, which is {json_kind(value)}; it must be text, "
            "a list, or an object with an 'items' list",
            ProblemType.map_not_mappable,
        )
        return None
    if is_text_options:
        problems.add(
            loc,
            f"{who}: chunk_tokens and overlap_tokens apply to text; {show(m.over)} is a list",
            ProblemType.map_chunking_not_text,
        )
    for k, item in enumerate(items):
        missing = missing_item_path(item, paths)
        if missing is not None:
            problems.add(
                ("body", "agents", i, "task"),
                f"the task of {who} uses {{{{item.{'.'.join(missing)}}}}}, but item {k} of "
                f"{show(m.over)} has no such field",
                ProblemType.unknown_item_field,
            )
            break
    if len(items) > limit:
        too_many(f"{len(items):,}", "items of the list")
    return plan(context_path=path, known_items=len(items))
