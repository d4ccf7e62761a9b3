"""Reading what end-to-end tests drive: the examples, the service's agents and the rows it
stored, and the simulator's request log."""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx2

from tests.helpers.processes import ROOT, Proc


def load(name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((ROOT / "examples" / name).read_text())
    return body


def sim_requests(simulator: Proc) -> list[dict[str, Any]]:
    """The simulator's whole request log, page by page."""
    entries: list[dict[str, Any]] = []
    after = 0
    while True:
        page = httpx2.get(f"{simulator.url}/_sim/requests", params={"after": after}).json()
        entries += page["data"]
        if not page["data"]:
            return entries
        after = page["next_after"]


def agent(client: httpx2.Client, job_id: str, agent_id: str) -> dict[str, Any]:
    body: dict[str, Any] = client.get(f"/jobs/{job_id}/agents/{agent_id}").json()
    return body


def agent_rows(db: Path, job_id: str) -> dict[str, tuple[str, int, str | None]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT agent_id, status, attempts, prompt FROM agents WHERE job_id = ?", (job_id,)
        ).fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def wait_for_completed(client: httpx2.Client, job_id: str, at_least: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        counts = client.get(f"/jobs/{job_id}", params={"agents": "false"}).json()["counts"]
        if counts["completed"] >= at_least:
            return
        time.sleep(0.05)
    raise AssertionError("the job made no progress")


def calls_by_prompt(simulator: Proc) -> Counter[str]:
    return Counter(r["messages"][-1]["content"] for r in sim_requests(simulator))
