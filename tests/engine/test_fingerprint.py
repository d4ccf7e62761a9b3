"""The request fingerprint: every field that decides an answer changes it, nothing else
does."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from app.engine.fingerprint import FINGERPRINT_FIELDS, RequestKey

BASE = RequestKey(
    provider="default",
    upstream_model="kimi-k2.5",
    messages=(("system", "You return JSON."), ("user", "Summarise: text")),
    temperature=0.0,
    max_tokens=256,
    response_format="json",
    extra_body={"top_p": 1, "seed": 7},
)

CHANGES: dict[str, Any] = {
    "provider": "openrouter",
    "upstream_model": "moonshotai/kimi-k2.5",
    "messages": (("system", "You return JSON."), ("user", "Summarise: text!")),
    "temperature": None,
    "max_tokens": 257,
    "response_format": None,
    "extra_body": {"top_p": 1, "seed": 8},
}


def test_the_fingerprint_covers_exactly_the_listed_fields() -> None:
    assert FINGERPRINT_FIELDS == (
        "provider",
        "upstream_model",
        "messages",
        "temperature",
        "max_tokens",
        "response_format",
        "extra_body",
    )
    assert set(CHANGES) == set(FINGERPRINT_FIELDS)


@pytest.mark.parametrize("name", list(CHANGES))
def test_each_field_changes_the_fingerprint(name: str) -> None:
    changed = dataclasses.replace(BASE, **{name: CHANGES[name]})
    assert changed.fingerprint() != BASE.fingerprint()


def test_equal_requests_have_equal_fingerprints_whatever_the_key_order() -> None:
    same = dataclasses.replace(BASE, extra_body={"seed": 7, "top_p": 1})
    assert same.fingerprint() == BASE.fingerprint()
    assert len(BASE.fingerprint()) == 64


def test_a_role_moved_between_messages_is_another_request() -> None:
    merged = dataclasses.replace(BASE, messages=(("user", "You return JSON.\nSummarise: text"),))
    assert merged.fingerprint() != BASE.fingerprint()
    # The same texts under swapped roles: another request.
    swapped = dataclasses.replace(
        BASE, messages=(("user", "You return JSON."), ("system", "Summarise: text"))
    )
    assert swapped.fingerprint() != BASE.fingerprint()
