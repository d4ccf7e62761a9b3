"""The transcript of a tool loop read back: the conversation, what is left to do, usage."""

from __future__ import annotations

from app.engine.transcript import Step, StepKind, Transcript, call_id_for, parse_arguments
from app.engine.usage import Usage


def model(seq: int, step: int, *calls: tuple[str, str], content: str = "") -> Step:
    planned = [
        {"id": f"m{k}", "call_id": call_id_for("job", "a", step, k), "name": n, "arguments": a}
        for k, (n, a) in enumerate(calls)
    ]
    usage = Usage(10, 5, 15).columns()
    return Step(
        seq,
        step,
        StepKind.model,
        None,
        None,
        {"content": content, "tool_calls": planned, "usage": usage},
    )


def result(seq: int, step: int, index: int, content: str) -> Step:
    return Step(
        seq,
        step,
        StepKind.tool_result,
        call_id_for("job", "a", step, index),
        "t",
        {"ok": True, "content": content},
    )


def started(seq: int, step: int, index: int) -> Step:
    return Step(seq, step, StepKind.tool_call, call_id_for("job", "a", step, index), "t", {})


def test_an_empty_transcript_has_everything_to_do() -> None:
    t = Transcript()
    assert t.next_seq == 1 and t.pending_calls() == [] and t.final_answer() is None
    assert t.messages() == []


def test_calls_without_a_result_are_pending_even_if_started() -> None:
    t = Transcript(
        [
            model(1, 1, ("t", "{}"), ("t", '{"q": 1}')),
            started(2, 1, 0),
            started(3, 1, 1),
            result(4, 1, 1, "B"),
        ]
    )
    (pending,) = t.pending_calls()
    assert pending.index == 0 and pending.call_id == "job.a.1.0"
    assert t.next_seq == 5


def test_the_conversation_orders_results_by_call_not_by_arrival() -> None:
    t = Transcript(
        [
            model(1, 1, ("t", "{}"), ("u", "{}")),
            result(2, 1, 1, "second"),
            result(3, 1, 0, "first"),
            model(4, 2, content="done"),
        ]
    )
    messages = t.messages()
    assert [m["role"] for m in messages] == ["assistant", "tool", "tool", "assistant"]
    assert [m.get("tool_call_id") for m in messages[1:3]] == ["m0", "m1"]
    assert [m["content"] for m in messages[1:3]] == ["first", "second"]
    assert messages[0]["tool_calls"][1]["function"] == {"name": "u", "arguments": "{}"}
    final = t.final_answer()
    assert final is not None and final.data["content"] == "done"
    assert t.usage().prompt_tokens == 20 and t.tool_results() == 2


def test_arguments() -> None:
    assert parse_arguments("") == {}
    assert parse_arguments('{"a": 1}') == {"a": 1}
    assert parse_arguments("[1]") == "the arguments must be a JSON object"
    reason = parse_arguments("{nope")
    assert isinstance(reason, str) and reason.startswith("the arguments are not valid JSON")
