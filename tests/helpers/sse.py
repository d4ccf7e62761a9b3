"""A small Server-Sent Events parser for tests (what a browser's EventSource does)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SSE:
    id: str | None
    event: str
    data: str

    def json(self) -> Any:
        return json.loads(self.data)


def parse_lines(lines: Iterable[str]) -> tuple[list[SSE], int]:
    """Events, and the number of comment lines (heartbeats) seen."""
    events: list[SSE] = []
    comments = 0
    ev_id: str | None = None
    ev_type = "message"
    data: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r")
        if line == "":
            if data:
                events.append(SSE(ev_id, ev_type, "\n".join(data)))
            ev_id, ev_type, data = None, "message", []
            continue
        if line.startswith(":"):
            comments += 1
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "id":
            ev_id = value
        elif field == "event":
            ev_type = value
        elif field == "data":
            data.append(value)
    return events, comments


def parse(text: str) -> list[SSE]:
    return parse_lines(text.replace("\r\n", "\n").split("\n"))[0]
