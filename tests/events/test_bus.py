def test_an_events_dollars_are_given_to_a_billionth() -> None:
    from datetime import UTC, datetime

    from app.events.bus import StoredEvent

    event = StoredEvent(
        "j",
        3,
        "agent.completed",
        "a",
        datetime(2026, 12, 2, tzinfo=UTC),
        {"cost_usd": 8.790000000000001e-05, "usage": {"total_tokens": 7}, "saved_usd": 0.1 + 0.2},
    )
    body = event.payload()
    assert body["cost_usd"] == 0.0000879 and body["saved_usd"] == 0.3
    assert body["usage"] == {"total_tokens": 7}
    assert event.data["cost_usd"] == 8.790000000000001e-05  # the stored sum is kept
