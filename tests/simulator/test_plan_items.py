"""Planner answers: in JSON mode, a prompt that mentions ``items`` gets a list of sub-tasks."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.simulator.content import VOCABULARY, prompt_tag
from tests.simulator.conftest import Sim

JSON_OBJECT = {"type": "json_object"}
JSON_SCHEMA = {
    "type": "json_schema",
    "json_schema": {"name": "plan", "schema": {"type": "object"}},
}


def user(prompt: str) -> list[Any]:
    return [
        {"role": "system", "content": "You are a planner."},
        {"role": "user", "content": prompt},
    ]


async def ask(sim: Sim, messages: list[Any], **kwargs: Any) -> tuple[dict[str, Any], Any]:
    """The parsed JSON answer and the whole completion."""
    kwargs.setdefault("response_format", JSON_OBJECT)
    result = await sim.client().chat.completions.create(model="m", messages=messages, **kwargs)
    content = result.choices[0].message.content
    assert content is not None
    data: dict[str, Any] = json.loads(content)
    return data, result


def answer_words(data: dict[str, Any]) -> int:
    total = len(data["summary"].split(" "))
    for item in data.get("items", []):
        total += len(item["title"].split(" ")) + len(item["question"].split(" "))
    return total


def check_items(items: list[dict[str, Any]]) -> None:
    for i, item in enumerate(items):
        assert set(item) == {"index", "title", "question"}
        assert item["index"] == i
        title, question = item["title"].split(" "), item["question"].split(" ")
        assert 3 <= len(title) <= 6
        assert 8 <= len(question) <= 16
        assert all(w in VOCABULARY for w in title + question)


@pytest.mark.parametrize("response_format", [JSON_OBJECT, JSON_SCHEMA])
async def test_items_only_in_json_mode_when_the_prompt_mentions_them(
    sim: Sim, response_format: dict[str, Any]
) -> None:
    messages = user('Split the work; answer {"items": [...]}.')
    data, result = await ask(sim, messages, response_format=response_format)
    assert set(data) == {"tag", "summary", "items"}
    assert data["tag"] == prompt_tag(messages)
    assert 3 <= len(data["items"]) <= 8  # no count in the prompt: fixed by its hash
    check_items(data["items"])
    assert result.choices[0].finish_reason == "stop"
    assert result.usage.completion_tokens == answer_words(data)
    assert result.usage.total_tokens == result.usage.prompt_tokens + answer_words(data)

    plain = await sim.client().chat.completions.create(model="m", messages=messages)
    content = plain.choices[0].message.content
    assert content is not None
    assert content.startswith(prompt_tag(messages) + ": ")
    assert "items" not in content and "{" not in content
    assert plain.usage is not None
    assert plain.usage.completion_tokens == len(content.split(" ")) - 1


@pytest.mark.parametrize(
    "prompt",
    [
        "Summarise the quarterly numbers.",
        "List the Items to check.",  # case-sensitive
        "Check the subitems and line_items.",  # whole word only
        "Write 12 item lists.",
    ],
)
async def test_prompts_without_items_keep_the_old_shape(sim: Sim, prompt: str) -> None:
    data, result = await ask(sim, user(prompt))
    assert set(data) == {"tag", "summary"}
    assert len(data["summary"].split(" ")) == result.usage.completion_tokens


async def test_explicit_counts(sim: Sim) -> None:
    data, _ = await ask(sim, user("Plan exactly 12 items for the review."))
    assert len(data["items"]) == 12
    check_items(data["items"])

    data, result = await ask(sim, user("There are 0 items to plan."))
    assert data["items"] == []
    assert result.usage.completion_tokens == len(data["summary"].split(" "))

    # The first "N items" wins, and it may come from another message than the word "items".
    messages = [
        {"role": "system", "content": "Plan 2 items,\nnot 7 items."},
        {"role": "user", "content": [{"type": "text", "text": "Go."}]},
    ]
    data, _ = await ask(sim, messages)
    assert len(data["items"]) == 2

    data, _ = await ask(sim, user("Plan 5000 items."))
    assert len(data["items"]) == 1000
    check_items(data["items"])


async def test_items_in_content_parts_count(sim: Sim) -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "a list of items"}]}]
    data, _ = await ask(sim, messages)
    assert 3 <= len(data["items"]) <= 8


async def test_items_are_deterministic_and_depend_on_the_prompt(sim: Sim, start_sim: Any) -> None:
    other = await start_sim(seed=99)
    prompt = user("Plan 6 items about the audit.")
    first, r1 = await ask(sim, prompt)
    second, r2 = await ask(sim, prompt)
    third, _ = await ask(other, prompt)
    assert first == second == third
    assert r1.usage.completion_tokens == r2.usage.completion_tokens

    different, _ = await ask(sim, user("Plan 6 items about the budget."))
    assert len(different["items"]) == 6
    assert different["items"] != first["items"]
    titles = [item["title"] for item in first["items"]]
    questions = [item["question"] for item in first["items"]]
    assert len(set(titles)) == len(titles)
    assert len(set(questions)) == len(questions)


async def test_max_tokens_drops_trailing_items_whole(sim: Sim) -> None:
    prompt = user("Plan 10 items.")
    full, full_result = await ask(sim, prompt)
    summary_words = len(full["summary"].split(" "))
    first_three = answer_words({"summary": full["summary"], "items": full["items"][:3]})
    budget = first_three + 1  # room for three items and one word of the fourth

    capped, result = await ask(sim, prompt, max_tokens=budget)
    assert result.choices[0].finish_reason == "length"
    assert capped["summary"] == full["summary"]
    assert capped["items"] == full["items"][:3]
    assert result.usage.completion_tokens == first_three <= budget

    roomy, roomy_result = await ask(sim, prompt, max_tokens=full_result.usage.completion_tokens)
    assert roomy_result.choices[0].finish_reason == "stop"
    assert roomy == full

    # A cap inside the summary cuts it as before and leaves no room for any item.
    tiny, tiny_result = await ask(sim, prompt, max_tokens=min(3, summary_words))
    assert tiny_result.choices[0].finish_reason == "length"
    assert tiny["items"] == []
    assert full["summary"].startswith(tiny["summary"])
    assert tiny_result.usage.completion_tokens == len(tiny["summary"].split(" "))


async def test_stream_equals_non_stream(start_sim: Any) -> None:
    sim = await start_sim(latency_base_ms=20)
    messages = user("Plan exactly 4 items.")
    data, plain = await ask(sim, messages)
    stream = await sim.client().chat.completions.create(
        model="m",
        messages=messages,
        response_format=JSON_OBJECT,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usages, finishes = [], [], []
    async for chunk in stream:
        if chunk.usage is not None:
            usages.append(chunk.usage)
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    assert "".join(pieces) == plain.choices[0].message.content
    assert json.loads("".join(pieces)) == data
    assert len(data["items"]) == 4
    assert finishes == ["stop"]
    # The same usage, except that the repeated system prompt is now cached.
    unchanged = {"prompt_tokens_details"}
    assert [u.model_dump(exclude=unchanged) for u in usages] == [
        plain.usage.model_dump(exclude=unchanged)
    ]
