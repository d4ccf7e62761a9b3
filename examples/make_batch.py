#!/usr/bin/env python3
"""Generate the seed article's document batch: N document analyses in parallel, merged
into one report.

    python examples/make_batch.py 5000 | swarmctl submit - --follow
    python examples/make_batch.py 200 -o /tmp/batch.json

Each of the N synthetic documents (invoices, contracts, incident reports, customer e-mails,
meeting notes; deterministic for a given --seed) sits in the job's `context` and is
analysed by its own agent. A single report over thousands of analyses would not fit any
model's context window, so above --group-size documents the analyses are merged in two
steps: one section summary per group, then the report over the sections (5,000 documents:
5,000 analyses → 50 sections → 1 report, 5,051 agents). At or below --group-size it is
N analyses and one report.

The failure policy is `continue`: a document whose analysis fails is noted in its section
summary instead of cancelling the report. Only the standard library is used.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from typing import Any

FIRST = ["Ana", "Bo", "Chen", "Dana", "Emil", "Farah", "Goran", "Hana", "Ines", "Jonas"]
LAST = ["Alvarez", "Berg", "Costa", "Dubois", "Eriksen", "Fischer", "Gupta", "Haddad", "Ito"]
COMPANIES = [
    "Acme Logistics",
    "Blue Fjord Energy",
    "Cobalt Health",
    "Delta Foods",
    "Evergreen Retail",
    "Falcon Freight",
    "Granite Insurance",
    "Helix Software",
]
PRODUCTS = ["pallet racks", "cloud storage", "cold-chain transport", "lab reagents", "licences"]
ISSUES = ["late delivery", "a billing error", "a data-sync outage", "damaged goods", "a login bug"]


def _person(rng: random.Random) -> str:
    return f"{rng.choice(FIRST)} {rng.choice(LAST)}"


def _date(rng: random.Random) -> str:
    return f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def _money(rng: random.Random) -> str:
    return f"EUR {rng.randint(200, 250_000):,}.{rng.randint(0, 99):02d}"


def _invoice(rng: random.Random, n: int) -> str:
    seller, buyer = rng.sample(COMPANIES, 2)
    lines = [
        f"- {rng.randint(1, 40)} x {rng.choice(PRODUCTS)} at {_money(rng)}"
        for _ in range(rng.randint(2, 5))
    ]
    return (
        f"INVOICE {n:06d}\nIssued {_date(rng)} by {seller} to {buyer}.\n"
        + "\n".join(lines)
        + f"\nTotal due: {_money(rng)} within {rng.choice([14, 30, 60])} days. "
        f"Contact: {_person(rng)}, accounts receivable."
    )


def _contract(rng: random.Random, n: int) -> str:
    a, b = rng.sample(COMPANIES, 2)
    return (
        f"SERVICE AGREEMENT No. C-{n:05d}\nBetween {a} (the Provider) and {b} (the Client), "
        f"effective {_date(rng)} for {rng.randint(1, 5)} years. The Provider supplies "
        f"{rng.choice(PRODUCTS)} for an annual fee of {_money(rng)}. Either party may terminate "
        f"with {rng.choice([30, 60, 90])} days' written notice. Liability is capped at "
        f"{_money(rng)}. Signed by {_person(rng)} and {_person(rng)}."
    )


def _incident(rng: random.Random, n: int) -> str:
    return (
        f"INCIDENT REPORT #{n}\nDate: {_date(rng)}. Reported by {_person(rng)} at "
        f"{rng.choice(COMPANIES)}. Summary: {rng.choice(ISSUES)} affected "
        f"{rng.randint(3, 4000)} customers for {rng.randint(5, 600)} minutes. Root cause: "
        f"{rng.choice(['a misconfigured deploy', 'an expired certificate', 'a vendor fault'])}. "
        f"Severity {rng.randint(1, 4)}. Follow-up owner: {_person(rng)}."
    )


def _email(rng: random.Random, n: int) -> str:
    mood = rng.choice(["disappointed", "satisfied", "furious", "confused", "grateful"])
    return (
        f"From: {_person(rng)} <customer{n}@example.com>\nSubject: About {rng.choice(ISSUES)}\n\n"
        f"Hello, I am {mood} about {rng.choice(ISSUES)} on my order from {_date(rng)} "
        f"({rng.choice(PRODUCTS)}, {_money(rng)}). I expect an answer within "
        f"{rng.randint(1, 10)} days. Regards."
    )


def _minutes(rng: random.Random, n: int) -> str:
    people = ", ".join(_person(rng) for _ in range(rng.randint(3, 6)))
    return (
        f"MEETING NOTES {_date(rng)} ({rng.choice(COMPANIES)}, meeting {n})\nAttendees: {people}.\n"
        f"Decisions: budget of {_money(rng)} approved for {rng.choice(PRODUCTS)}; "
        f"{rng.choice(ISSUES)} to be fixed by {_date(rng)}.\nActions: {_person(rng)} drafts the "
        f"plan; {_person(rng)} informs the client."
    )


KINDS = [_invoice, _contract, _incident, _email, _minutes]


def make_batch(
    n: int, *, group_size: int = 100, seed: int = 0, model: str | None = None
) -> dict[str, Any]:
    if n < 1:
        raise ValueError("N must be at least 1")
    if group_size < 2:
        raise ValueError("--group-size must be at least 2")
    rng = random.Random(seed)
    width = max(4, len(str(n)))
    documents: dict[str, str] = {}
    agents: list[dict[str, Any]] = []
    for i in range(1, n + 1):
        key = f"doc_{i:0{width}d}"
        documents[key] = rng.choice(KINDS)(rng, i)
        agents.append(
            {
                "id": key,
                "task": "Analyse this document. Reply with JSON: type, parties, dates, "
                "amounts, sentiment, and a one-sentence gist.\n\n"
                f"{{{{context.documents.{key}}}}}",
            }
        )
    doc_ids = [a["id"] for a in agents]
    if n <= group_size:
        report_inputs = doc_ids
    else:
        report_inputs = []
        for g, start in enumerate(range(0, n, group_size), 1):
            members = doc_ids[start : start + group_size]
            section = f"section_{g:03d}"
            agents.append(
                {
                    "id": section,
                    "system_prompt": "You merge document analyses into a short section summary.",
                    "task": f"Summarise these {len(members)} document analyses: document "
                    "types, total amounts, recurring issues and anything unusual.",
                    "depends_on": members,
                    "response_format": "text",
                    "max_tokens": 600,
                }
            )
            report_inputs.append(section)
    agents.append(
        {
            "id": "report",
            "system_prompt": "You write concise reports for executives.",
            "task": f"Write one report on the batch of {n:,} documents from the analyses "
            "below: volumes by type, money involved, main risks and recommended actions.",
            "depends_on": report_inputs,
            "response_format": "text",
            "max_tokens": 1500,
        }
    )
    graph: dict[str, Any] = {
        "name": f"document-batch-{n}",
        "max_concurrency": 200,
        "failure_policy": "continue",
        "system_prompt": "You analyse business documents and return JSON only.",
        "response_format": "json",
        "max_tokens": 300,
        "context": {"documents": documents},
        "metadata": {
            "example": "seed article: batch document analysis",
            "documents": n,
            "group_size": group_size,
            "seed": seed,
        },
        "agents": agents,
    }
    if model:
        graph["model"] = model
    return graph


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write a job graph that analyses N synthetic documents and merges the "
        "analyses into one report."
    )
    parser.add_argument("n", type=int, metavar="N", help="number of documents (e.g. 5000)")
    parser.add_argument(
        "--group-size",
        type=int,
        default=100,
        help="analyses per section summary when N is larger than this (default 100)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic documents")
    parser.add_argument("--model", help="the job's model (default: the service's default)")
    parser.add_argument("-o", "--output", help="write to this file instead of stdout")
    args = parser.parse_args(argv)
    try:
        graph = make_batch(args.n, group_size=args.group_size, seed=args.seed, model=args.model)
    except ValueError as exc:
        parser.error(str(exc))
    text = json.dumps(graph, ensure_ascii=False, indent=1) + "\n"
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
