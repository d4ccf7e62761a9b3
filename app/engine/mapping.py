"""Map nodes and hierarchical reduce, the pure parts: the items a map node fans out over,
reading a planner's JSON list, how a map node's outputs appear in a prompt, and grouping
outputs that do not fit one context window into merge steps.

Ids of the sub-agents a run creates (``[`` never appears in a submitted id, so these cannot
clash with one): ``NODE[I]`` for item I of map node NODE, ``AGENT[mergeL.G]`` for group G
of merge level L of AGENT's hierarchical reduce.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app.engine.chunking import chunk_text, count_tokens
from app.engine.map_checks import MapPlan, mappable_items, missing_item_path
from app.engine.problems import json_kind
from app.engine.templates import DepOutput, MapItem, format_dep_output, lookup_context

# How much of a bad planner answer an error message shows.
_SHOWN_CHARS = 300
# A fenced answer (```json … ```) is read from inside the fence.
_FENCE_RE = re.compile(r"^\s*```[A-Za-z0-9_-]*\s*\n(.*?)\n?\s*```\s*$", re.DOTALL)
# Tokens one part's wrapper (<part id="…">…</part>) costs in a prompt, generously.
PART_OVERHEAD_TOKENS = 24


def item_id(node: str, index: int) -> str:
    return f"{node}[{index}]"


def merge_id(agent: str, level: int, group: int) -> str:
    return f"{agent}[merge{level}.{group}]"


class PlanError(ValueError):
    """A planner's answer is not a list a map node can fan out over; the message shows what
    came back and what was expected."""


def _shown(text: str) -> str:
    text = text.strip()
    if len(text) > _SHOWN_CHARS:
        return json.dumps(text[:_SHOWN_CHARS], ensure_ascii=False)[:-1] + '…"'
    return json.dumps(text, ensure_ascii=False)


def parse_plan(output: str, paths: Sequence[tuple[str, ...]] = ()) -> list[Any]:
    """The items of a planner's answer: a JSON list, or an object with an 'items' list
    (inside a Markdown code fence is fine). Each item must have every path of ``paths``.
    Raises ``PlanError`` saying what came back otherwise."""
    text = output
    fenced = _FENCE_RE.match(text)
    if fenced:
        text = fenced.group(1)
    try:
        value = json.loads(text)
        # Items are stored as JSON text: they must nest sanely and be valid Unicode.
        json.dumps(value, ensure_ascii=False).encode()
    except json.JSONDecodeError as exc:
        raise PlanError(
            f"the answer is not valid JSON ({exc.msg} at character {exc.pos}); a map node "
            f'needs a JSON list or {{"items": [...]}}; got {_shown(output)}'
        ) from None
    except RecursionError:
        raise PlanError(
            f"the answer nests too deeply to be read as a plan; got {_shown(output)}"
        ) from None
    except UnicodeEncodeError:
        raise PlanError(
            "the answer holds text that is not valid Unicode (an unpaired surrogate escape "
            f"such as \\ud800); got {_shown(output.encode('ascii', 'backslashreplace').decode())}"
        ) from None
    items = mappable_items(value)
    if items is None:
        kind = json_kind(value)
        if isinstance(value, dict):
            keys = ", ".join(json.dumps(k) for k in list(value)[:10]) or "no keys"
            kind = f"an object with {keys} but no 'items' list"
        raise PlanError(
            f'the answer is {kind}; a map node needs a JSON list or {{"items": [...]}}; '
            f"got {_shown(output)}"
        )
    for k, item in enumerate(items):
        missing = missing_item_path(item, paths)
        if missing is not None:
            raise PlanError(
                f"item {k} of the answer has no field {'.'.join(missing)!r}, which the map "
                f"node's task uses; got item {k} = {_shown(json.dumps(item, ensure_ascii=False))}"
            )
    return items


def items_from_values(values: Sequence[Any]) -> list[MapItem]:
    n = len(values)
    return [MapItem(index=i, count=n, value=v) for i, v in enumerate(values)]


def items_from_text(text: str, *, chunk_tokens: int, overlap_tokens: int) -> list[MapItem]:
    chunks = chunk_text(text, chunk_tokens=chunk_tokens, overlap_tokens=overlap_tokens)
    return [
        MapItem(
            index=c.index,
            count=c.count,
            value={
                "index": c.index,
                "number": c.index + 1,
                "count": c.count,
                "text": c.text,
                "start": c.start,
                "end": c.end,
            },
            chunk=True,
        )
        for c in chunks
    ]


def context_items(plan: MapPlan, context: Mapping[str, Any]) -> list[MapItem]:
    """The items of a map over the context (validated at submit, so the value is there)."""
    value = lookup_context(context, plan.context_path)
    if isinstance(value, str):
        return items_from_text(
            value, chunk_tokens=plan.chunk_tokens, overlap_tokens=plan.overlap_tokens
        )
    values = mappable_items(value)
    if values is None:  # pragma: no cover - validate_graph rules it out
        raise PlanError("the context value is not a list")
    return items_from_values(values)


def item_to_json(item: MapItem) -> dict[str, Any]:
    """How an item is stored with its sub-agent (so a restart needs no recomputation)."""
    return {"index": item.index, "count": item.count, "value": item.value, "chunk": item.chunk}


def item_from_json(data: Mapping[str, Any]) -> MapItem:
    return MapItem(
        index=int(data["index"]),
        count=int(data["count"]),
        value=data.get("value"),
        chunk=bool(data.get("chunk")),
    )


def render_parts(entries: Sequence[tuple[str, DepOutput]]) -> str:
    """How a list of outputs (a map node's, or a merge level's) appears in a prompt::

    <part id="parts[0]">
    …the output, verbatim…
    </part>
    <part id="parts[1]">
    [agent parts[1] failed: …]
    </part>
    """
    return "\n".join(
        f'<part id="{part_id}">\n{format_dep_output(dep)}\n</part>' for part_id, dep in entries
    )


def part_tokens(part_id: str, dep: DepOutput) -> int:
    return count_tokens(format_dep_output(dep)) + count_tokens(part_id) + PART_OVERHEAD_TOKENS


MERGE_INSTRUCTIONS = (
    "You are one step of a hierarchical merge. The task below needs {total} partial "
    "results, too many to read at once, so they are merged in groups; this group holds "
    "{count} of them. Carry out the task on this group only. Your answer will be merged with "
    "the answers for the other groups, so keep every detail the final answer may need, as "
    "briefly as you can."
)


def merge_prompt(task: str, entries: Sequence[tuple[str, DepOutput]], total: int) -> str:
    """The user message of one merge step: the instructions, the reducer's task (rendered,
    with the merged outputs left out) and this group's partial results."""
    return (
        MERGE_INSTRUCTIONS.format(total=total, count=len(entries))
        + f"\n\n<task>\n{task}\n</task>\n\n<partial_results>\n"
        + render_parts(entries)
        + "\n</partial_results>"
    )


def group_for_merge(sizes: Sequence[int], budget: int) -> list[list[int]]:
    """Consecutive groups of the indices of ``sizes`` (tokens per input), each adding up to at
    most ``budget`` (an input larger than ``budget`` makes a group of its own), in order."""
    groups: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i, size in enumerate(sizes):
        if current and used + size > budget:
            groups.append(current)
            current, used = [], 0
        current.append(i)
        used += size
    if current:
        groups.append(current)
    return groups


@dataclass(frozen=True, slots=True)
class ReduceBudget:
    """The token arithmetic of one reducer: its model's window, what it keeps for the answer,
    and what each merge step may answer."""

    window: int
    answer_reserve: int
    merge_max_tokens: int


def reduce_budget(window: int, max_tokens: int | None) -> ReduceBudget:
    """The room an agent leaves for its answer is its max_tokens, or a quarter of the window
    (at most 4,096 tokens) when unset. A merge step answers in at most that many tokens too,
    and at most an eighth of the window, so that every merge level shrinks the input."""
    reserve = max_tokens if max_tokens is not None else min(4_096, window // 4)
    merge_max = max(16, min(reserve, window // 8))
    return ReduceBudget(window=window, answer_reserve=reserve, merge_max_tokens=merge_max)


# A hierarchical reduce that needs more merge levels than this is going nowhere.
MAX_MERGE_LEVELS = 8


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a map node cannot fan out, or a reducer cannot merge: the node fails with this."""

    error: str
    reason: str


def source_values(
    node: str,
    plan: MapPlan,
    source: DepOutput,
    source_list: Sequence[str | None] | None,
    failure_note: Callable[[int], str] | None = None,
) -> list[Any] | Refusal:
    """What a map node over another agent fans out over: a planner's JSON list, or the
    list output of a map node (`source_list`), whose failed items (None) are passed on as
    `failure_note(k)`, the note their dependents would see, never as null."""
    if source.failed:
        return Refusal(
            f"map node {node!r} has nothing to fan out over: its source "
            f"{plan.source_agent!r} failed",
            "source_failed",
        )
    if source_list is not None:
        return [
            v if v is not None or failure_note is None else failure_note(k)
            for k, v in enumerate(source_list)
        ]
    try:
        return parse_plan(source.output or "", plan.item_paths)
    except PlanError as exc:
        return cannot_fan_out(node, plan, exc)


def cannot_fan_out(node: str, plan: MapPlan, exc: PlanError) -> Refusal:
    return Refusal(
        f"map node {node!r} cannot fan out over {plan.source_agent!r}: {exc}", "invalid_plan"
    )


def fan_out_refusal(
    node: str, count: int, *, max_items: int, created: int, job_max: int
) -> Refusal | None:
    """A fan-out of `count` items over the node's or the job's limit (`created`: sub-agents
    the job has made already)."""
    if count > max_items:
        return Refusal(
            f"map node {node!r} would fan out to {count:,} sub-agents; at most "
            f"{max_items:,} are allowed per map node",
            "too_many_items",
        )
    if created + count > job_max:
        return Refusal(
            f"map node {node!r} would fan out to {count:,} sub-agents, and the job "
            f"has created {created:,} already; at most {job_max:,} are allowed per job",
            "too_many_items",
        )
    return None


def plan_merge_level(
    agent_id: str,
    entries: Sequence[tuple[str, DepOutput]],
    *,
    level: int,
    window: int,
    model: str,
    fixed_tokens: int,
    created: int,
    job_max: int,
) -> list[list[int]] | Refusal:
    """The groups (indices into `entries`) of a reducer's next merge level, each fitting
    one merge step: the window less `fixed_tokens` (instructions, task, answer), or why
    the inputs cannot be merged."""
    if level > MAX_MERGE_LEVELS:
        return Refusal(
            f"agent {agent_id!r}: its inputs still do not fit the window of "
            f"{model} after {MAX_MERGE_LEVELS} merge levels",
            "merge_failed",
        )
    room = window - fixed_tokens
    sizes = [part_tokens(i, d) for i, d in entries]
    groups = group_for_merge(sizes, max(room, 1))
    if room <= 0 or len(groups) >= len(entries):
        biggest = max(range(len(sizes)), key=sizes.__getitem__)
        return Refusal(
            f"agent {agent_id!r}: {len(entries)} inputs ({sum(sizes):,} tokens) do not fit "
            f"the {window:,}-token window of {model}, and cannot be merged in "
            f"groups: the largest, {entries[biggest][0]!r}, is {sizes[biggest]:,} tokens "
            f"and a merge step has room for {max(room, 0):,}; give the map node a smaller "
            "max_tokens, or use a model with a larger window",
            "merge_failed",
        )
    if created + len(groups) > job_max:
        return Refusal(
            f"agent {agent_id!r} would merge its inputs in {len(groups):,} steps, and the "
            f"job has created {created:,} sub-agents already; at most {job_max:,} "
            "are allowed per job",
            "too_many_items",
        )
    return groups
