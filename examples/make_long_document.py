#!/usr/bin/env python3
"""Generate the long-document example: a text far larger than one context window, cut into
chunks by a map node, one summary per chunk, merged into one summary by a reducer.

    python examples/make_long_document.py -o examples/long_document.json
    python examples/make_long_document.py --min-chars 2000000 | swarmctl submit - --follow
    python examples/make_long_document.py --model kimi-k2.5 | swarmctl submit - --follow

The document is a made-up gazetteer of a river country (towns, trades, floods, fairs,
people; deterministic for a given --seed): numbered sections, each a heading and a run of
paragraphs. Every paragraph starts with a unique marker, [§0001], [§0002], …, so any part
of the text can be traced to the chunks (and prompts) it reached. The default, about
800,000 characters, is well over the 131,072-token window of the job's model
(deepseek-v3.2; --model picks another). The chunks and the answers are sized from the
model's window (--context-window, else the service's registry when run from its checkout,
else 131,072), so the job fits a small local model too:

    python examples/make_long_document.py --model local --context-window 4096

Only the standard library is needed.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from typing import Any

TOWNS = [
    "Ashby Ford",
    "Belmere",
    "Carrow Bridge",
    "Dunhallow",
    "Elderwick",
    "Fennick",
    "Greyhaven",
    "Hollins End",
    "Ivybrook",
    "Kettleby",
    "Larkspur",
    "Marrowgate",
    "Northolm",
    "Oakhurst",
    "Pellham",
    "Quarry Cross",
    "Rook's Landing",
    "Saltmarsh",
    "Thornbury",
    "Upper Wexley",
    "Valemouth",
    "Willowmere",
    "Yarrow Hill",
    "Zennor Quay",
]
RIVERS = ["the Amber", "the Slow Teal", "the Harrow", "the Lune", "the Wend"]
FIRST = ["Agnes", "Bartholomew", "Clara", "Dorian", "Edith", "Felix", "Greta", "Hugo", "Isolde"]
FIRST += ["Jasper", "Katrin", "Leopold", "Maud", "Nikolai", "Ottilie", "Piers", "Rosalind"]
LAST = ["Ashdown", "Blackwood", "Carver", "Dunmore", "Ellery", "Fairweather", "Goodchild"]
LAST += ["Hartley", "Ingram", "Jessop", "Kendrick", "Lockwood", "Merriman", "Nightingale"]
TRADES = ["wool", "salt", "barley", "slate", "cider", "timber", "linen", "pottery", "eels"]
TRADES += ["honey", "rope", "leather", "glass", "cheese", "iron nails", "dyed cloth"]
CRAFTS = ["weavers", "coopers", "boatwrights", "masons", "tanners", "glaziers", "millers"]
CRAFTS += ["chandlers", "ropemakers", "potters", "smiths", "brewers", "bookbinders"]
BUILDINGS = ["the corn exchange", "the old toll house", "the chapel of St Brannoc"]
BUILDINGS += ["the weigh house", "the guild hall", "the stone granary", "the ferry inn"]
BUILDINGS += ["the covered market", "the lock keeper's cottage", "the free school"]
SEASONS = ["spring", "summer", "autumn", "winter"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August"]
MONTHS += ["September", "October", "November", "December"]
WEATHER = ["a late frost", "a summer of drought", "three weeks of rain", "an early snow"]
WEATHER += ["a gale from the west", "a warm, wet winter", "a fog that lasted for days"]
DIRECTIONS = ["north", "south", "east", "west", "upstream", "downstream"]
# The job's model: its 131,072-token window is far smaller than the default document.
DEFAULT_MODEL = "deepseek-v3.2"
# The window assumed for a model nobody describes (the registry's smallest built-in one).
DEFAULT_WINDOW = 131_072
# What a part's prompt holds besides its chunk (the task's words, the system message).
PROMPT_OVERHEAD_TOKENS = 512
THEMES = [
    "history and founding",
    "trade and markets",
    "the river and its floods",
    "crafts and guilds",
    "buildings and streets",
    "fairs and customs",
    "farming and the seasons",
    "roads, ferries and travellers",
    "schools, books and learning",
    "notable people",
]

# Sentence templates; the fields are filled from the lists above and from each paragraph's
# own town, river, year and person, so that a paragraph reads as one story.
OPENINGS = [
    "In {year} the people of {town} began to speak of {building} as the heart of the place.",
    "Few visitors to {town} leave without hearing about the {season} of {year}.",
    "The records of {town} for {year} are unusually full, thanks to the clerk {person}.",
    "{person} arrived in {town} in {month} {year} with little more than a cart of {trade}.",
    "Travellers coming from the {direction} first see {town} as a line of roofs above {river}.",
    "Nothing in the early charters of {town} suggests that it would one day outgrow {other}.",
    "By {year} {town} counted some {people:,} souls and {count} working {craft}.",
    "The story of {building} in {town} is, in many ways, the story of the town itself.",
    "Ask anyone in {town} about {year} and they will tell you about {weather}.",
    "The {craft} of {town} were proud, quarrelsome and, in {year}, unusually prosperous.",
    "A stranger reading the council minutes of {town} for {year} might think the town was at war.",
]
MIDDLES = [
    "The {craft} of the lower street sold {trade} as far as {other}, and their ledgers show "
    "a steady profit in most years.",
    "Old maps mark a ford where {river} runs shallow, and the ferry that replaced it still "
    "crossed twice an hour in {year}.",
    "{weather} in {year} ruined much of the harvest, and the town council bought grain from "
    "{other} at a painful price.",
    "A petition signed by {count} householders asked for the road to {other} to be widened "
    "and paved.",
    "The guild of {craft} kept its own school, where apprentices learned letters, sums and "
    "the secrets of the trade.",
    "Every {season} the market filled with {trade} and {trade2}, and prices were chalked on "
    "the wall of {building}.",
    "When {river} rose in {month}, the water reached the third step of {building}, a mark "
    "that is still painted there.",
    "{person} kept a diary for {span} years, and much of what we know about daily life in "
    "{town} comes from it.",
    "Letters from the period complain of mud, of tolls, and of the price of {trade} in {other}.",
    "The bridge was rebuilt in stone after {weather} carried away the timber one in {year}.",
    "Children were sent to gather rushes along {river}, which the {craft} wove into mats "
    "and baskets.",
    "A fire in {month} {year} destroyed {count} houses near {building}, and the rebuilding "
    "took the best part of a decade.",
    "Merchants from {other} came every {season} to buy {trade}, paying partly in coin and "
    "partly in {trade2}.",
    "The parish book for {year} lists {count} baptisms, each with the father's trade written "
    "beside it.",
    "Surveyors measured the meadows {direction} of the town and found them larger than the "
    "old deeds claimed.",
    "It was {person} who first proposed a lending library, stocked at first with {count} "
    "donated books.",
    "The toll on {trade} was doubled in {year}, and the carters simply took the longer road "
    "through {other}.",
    "A travelling preacher who stayed at {building} called the townsfolk stubborn but kind.",
    "The wells on the {direction} side turned brackish after {weather}, and a new pump was "
    "sunk near {building}.",
    "{person} left {count} pounds in a will to keep the lamps of the main street burning.",
    "Disputes over fishing rights on {river} came before the magistrates almost every {season}.",
]
CLOSINGS = [
    "Today a small plaque near {building} recalls those years.",
    "The arrangement lasted, with small changes, until well after {later}.",
    "Not everyone agreed, and the quarrel is remembered in {town} to this day.",
    "What followed is told in the next part of this account.",
    "By {later} the matter was settled, though few remembered how it had begun.",
    "Historians still argue about how much of the story is true.",
    "The same pattern can be seen, on a smaller scale, in {other}.",
    "It is a reminder that {town} was shaped as much by {river} as by its people.",
]


def _person(rng: random.Random) -> str:
    return f"{rng.choice(FIRST)} {rng.choice(LAST)}"


def _fill(template: str, rng: random.Random, place: dict[str, Any]) -> str:
    trade, trade2 = rng.sample(TRADES, 2)
    return template.format(
        town=place["town"],
        other=rng.choice([t for t in TOWNS if t != place["town"]]),
        river=place["river"],
        person=place["person"],
        year=place["year"],
        later=place["year"] + rng.randint(10, 60),
        month=rng.choice(MONTHS),
        season=rng.choice(SEASONS),
        trade=trade,
        trade2=trade2,
        craft=rng.choice(CRAFTS),
        building=rng.choice(BUILDINGS),
        weather=rng.choice(WEATHER),
        direction=rng.choice(DIRECTIONS),
        count=rng.randint(3, 90),
        span=rng.randint(4, 40),
        people=rng.randint(8, 120) * 50,
    )


def _paragraph(rng: random.Random, place: dict[str, Any]) -> str:
    sentences = [_fill(rng.choice(OPENINGS), rng, place)]
    sentences += [_fill(t, rng, place) for t in rng.sample(MIDDLES, rng.randint(3, 6))]
    sentences.append(_fill(rng.choice(CLOSINGS), rng, place))
    return " ".join(s[0].upper() + s[1:] for s in sentences)


def make_document(*, min_chars: int = 800_000, seed: int = 0) -> tuple[str, int, int]:
    """The document, its number of sections and of paragraphs: whole sections until the
    text has at least ``min_chars`` characters."""
    if min_chars < 1:
        raise ValueError("--min-chars must be at least 1")
    rng = random.Random(seed)
    blocks: list[str] = []
    length = paragraphs = sections = 0
    year = 1612
    while length < min_chars:
        sections += 1
        town = TOWNS[(sections - 1) % len(TOWNS)]
        theme = rng.choice(THEMES)
        heading = f"Section {sections}. {town}: {theme}"
        blocks.append(heading)
        length += len(heading) + 2
        for _ in range(rng.randint(6, 12)):
            paragraphs += 1
            year += rng.random() < 0.25  # some three centuries in all
            place = {"town": town, "river": rng.choice(RIVERS), "person": _person(rng)}
            place["year"] = year
            text = f"[§{paragraphs:04d}] " + _paragraph(rng, place)
            blocks.append(text)
            length += len(text) + 2
    return "\n\n".join(blocks), sections, paragraphs


def model_window(model: str) -> int:
    """The model's window from the service's registry (run from its checkout, with
    $SWARM_MODELS_FILE if set), else `DEFAULT_WINDOW`."""
    try:
        import os

        from app.upstream.registry import ModelRegistry
    except ImportError:
        return DEFAULT_WINDOW
    window = ModelRegistry.load(os.environ.get("SWARM_MODELS_FILE")).get(model).context_window
    return window or DEFAULT_WINDOW


def sizes(window: int) -> tuple[int, int, int]:
    """chunk_tokens, each part's max_tokens and the summary's, for a model's window: the
    defaults (6,000, 400, 1,500) where they fit, else shares of the window."""
    part_answer = min(400, window // 8)
    chunk = min(6000, window - part_answer - PROMPT_OVERHEAD_TOKENS)
    if chunk < 200:
        raise ValueError(f"a window of {window:,} tokens is too small to map a document over")
    return chunk, part_answer, min(1500, window // 4)


def make_job(
    *,
    min_chars: int = 800_000,
    seed: int = 0,
    model: str = DEFAULT_MODEL,
    context_window: int | None = None,
) -> dict[str, Any]:
    chunk_tokens, part_tokens, summary_tokens = sizes(context_window or DEFAULT_WINDOW)
    document, sections, paragraphs = make_document(min_chars=min_chars, seed=seed)
    title = "A Gazetteer of the River Country"
    return {
        "name": "long-document",
        "model": model,
        "max_concurrency": 50,
        "failure_policy": "skip_dependents",
        "context": {"title": title, "document": document},
        "metadata": {
            "example": "map over a document larger than one context window, then reduce",
            "characters": len(document),
            "sections": sections,
            "paragraphs": paragraphs,
            "seed": seed,
        },
        "agents": [
            {
                "id": "parts",
                "map": {
                    "over": "context.document",
                    "chunk_tokens": chunk_tokens,
                    "overlap_tokens": min(200, chunk_tokens // 10),
                },
                "system_prompt": "You summarise one part of a long document faithfully and "
                "briefly. Invent nothing.",
                "task": "This is part {{item.number}} of {{item.count}} of the document "
                '"{{context.title}}". Summarise this part in at most 200 words: the towns, '
                "people, years, trades and events it describes. Cite the marker that opens "
                "each paragraph you rely on (a section sign and four digits in brackets). The "
                "part may begin or end in the middle of a paragraph.\n\n<part>\n{{item}}\n</part>",
                "max_tokens": part_tokens,
            },
            {
                "id": "summary",
                "depends_on": ["parts"],
                "system_prompt": "You write clear, well-organised summaries of long documents.",
                "task": 'Below are summaries of the consecutive parts of "{{context.title}}", '
                "in order (consecutive parts overlap slightly). Write one summary of the "
                "whole document: its structure, the main towns and what each is known for, "
                "recurring themes such as trade, floods and fires, and the people who matter "
                "most. Keep the paragraph markers for the claims you make.\n\n"
                "{{agents.parts.output}}",
                "max_tokens": summary_tokens,
            },
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write a job graph that summarises a long synthetic document with a map "
        "node (one summary per chunk) and a reducer."
    )
    parser.add_argument(
        "--min-chars",
        type=int,
        default=800_000,
        help="the document's length at least, in characters (default 800,000)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic document")
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"the job's model (default {DEFAULT_MODEL})"
    )
    parser.add_argument(
        "--context-window",
        type=int,
        help="the model's window in tokens (default: the service's registry, else 131,072)",
    )
    parser.add_argument("-o", "--output", help="write to this file instead of stdout")
    args = parser.parse_args(argv)
    try:
        window = args.context_window or model_window(args.model)
        graph = make_job(
            min_chars=args.min_chars, seed=args.seed, model=args.model, context_window=window
        )
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
