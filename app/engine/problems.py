"""The catalogue of problems a submitted job can have, their collector (located, bounded),
and the shared wording: quoting what was sent, "did you mean", JSON kinds."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from app.engine.templates import ContextPathError

# How alike two words must be (difflib's ratio) for one to be offered for the other.
_CLOSE_ENOUGH = 0.6


def show(value: str, limit: int = 80) -> str:
    """``value`` quoted for a message; a pathological one is cut so it cannot bloat it."""
    return repr(value if len(value) <= limit else value[:limit] + "…")


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """``"; did you mean 'X'?"`` for the candidate closest to ``word``, or ``""``."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=_CLOSE_ENOUGH)
    return f"; did you mean {show(close[0])}?" if close else ""


Loc = tuple[str | int, ...]

# Enough to fix a bad submission in a few rounds without building a huge error response.
MAX_PROBLEMS = 100
# difflib is O(number of ids) per lookup; bound the work a hostile request can cause.
_MAX_SUGGESTIONS = 20
_MAX_LISTED_KEYS = 20


class ProblemType(StrEnum):
    """The ``type`` of a ``GraphProblem``."""

    empty = "job_graph.empty"
    too_many_agents = "job_graph.too_many_agents"
    duplicate_id = "job_graph.duplicate_id"
    duplicate_dependency = "job_graph.duplicate_dependency"
    self_dependency = "job_graph.self_dependency"
    unknown_dependency = "job_graph.unknown_dependency"
    cycle = "job_graph.cycle"
    malformed_reference = "template.malformed_reference"
    unknown_agent_reference = "template.unknown_agent"
    undeclared_dependency = "template.undeclared_dependency"
    self_reference = "template.self_reference"
    agent_reference_in_system_prompt = "template.agent_reference_in_system_prompt"
    missing_context = "template.missing_context"
    too_many_problems = "job_graph.too_many_problems"
    item_outside_map = "template.item_outside_map"
    unknown_item_field = "template.unknown_item_field"
    output_field_not_json = "template.output_field_not_json"
    unknown_output_field = "template.unknown_output_field"
    map_bad_source = "map.bad_source"
    map_source_not_json = "map.source_not_json"
    map_not_mappable = "map.not_mappable"
    map_chunking_not_text = "map.chunking_not_text"
    map_overlap_too_large = "map.overlap_too_large"
    map_too_many_items = "map.too_many_items"


@dataclass(frozen=True, slots=True)
class GraphProblem:
    """One thing wrong with a submitted job, located FastAPI-style (``("body", "agents", 3,
    "depends_on", 0)``)."""

    loc: Loc
    msg: str
    type: str

    def as_detail(self) -> dict[str, Any]:
        """The entry for a ``{"detail": [...]}`` 422 body."""
        return {"loc": list(self.loc), "msg": self.msg, "type": self.type}


class GraphValidationError(ValueError):
    """The job graph is invalid; ``problems`` lists everything found (at most MAX_PROBLEMS,
    the last then being a ``too_many_problems`` note)."""

    def __init__(self, problems: list[GraphProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(p.msg for p in problems[:5]) + ("; …" * (len(problems) > 5)))

    def detail(self) -> list[dict[str, Any]]:
        """All problems in the FastAPI 422 ``detail`` shape."""
        return [p.as_detail() for p in self.problems]


def list_keys(keys: Sequence[str]) -> str:
    shown = ", ".join(show(k, 40) for k in keys[:_MAX_LISTED_KEYS])
    more = len(keys) - _MAX_LISTED_KEYS
    return shown + (f", … ({more} more)" if more > 0 else "")


class Problems:
    """Collects problems up to MAX_PROBLEMS, then only counts the rest."""

    def __init__(self) -> None:
        self.items: list[GraphProblem] = []
        self.dropped = 0
        self.suggestions_left = _MAX_SUGGESTIONS

    def add(self, loc: Loc, msg: str, type_: ProblemType) -> None:
        if len(self.items) < MAX_PROBLEMS:
            self.items.append(GraphProblem(loc, msg, type_.value))
        else:
            self.dropped += 1

    def suggest(self, word: str, candidates: Iterable[str]) -> str:
        if self.suggestions_left <= 0:
            return ""
        self.suggestions_left -= 1
        return did_you_mean(word, candidates)

    def raise_if_any(self) -> None:
        if not self.items:
            return
        problems = list(self.items)
        if self.dropped:
            # The note takes the last slot so the list never exceeds MAX_PROBLEMS.
            problems[-1] = GraphProblem(
                ("body",),
                f"… and {self.dropped + 1} more problems not listed",
                ProblemType.too_many_problems.value,
            )
        raise GraphValidationError(problems)


def json_kind(value: Any) -> str:
    # Name the JSON type the caller sent, not the Python type it was parsed into.
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return f"a {type(value).__name__}"


def context_miss(exc: ContextPathError, problems: Problems) -> str:
    missing = exc.path[exc.depth]
    where = "context" if exc.depth == 0 else "context." + ".".join(exc.path[: exc.depth])
    container = exc.container
    if not isinstance(container, Mapping):
        return f"{where} is {json_kind(container)}, not an object, so it has no key {show(missing)}"
    keys = [str(k) for k in container]
    if not keys:
        return f"{where} is empty, so it has no key {show(missing)}"
    return (
        f"{where} has no key {show(missing)} (available keys: {list_keys(keys)})"
        + problems.suggest(missing, keys)
    )
