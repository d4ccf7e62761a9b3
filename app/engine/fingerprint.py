"""The fingerprint of one upstream request exactly as it would be sent: two requests with
equal fingerprints are the same call, so a job that opts in to reuse may take an earlier
answer to it instead of paying for it again."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Part of every fingerprint: a change to what is hashed (or how) bumps it, so fingerprints
# stored under an earlier scheme never match.
FINGERPRINT_VERSION = 1


@dataclass(frozen=True, slots=True)
class RequestKey:
    """What decides an upstream's answer, as the request carries it."""

    provider: str  # the upstream the call goes to (its name in the models file)
    upstream_model: str  # the model's name as sent to that upstream
    messages: tuple[tuple[str, str], ...]  # (role, content), after templates were filled in
    temperature: float | None  # None: the upstream's default
    max_tokens: int | None  # None: the upstream's default
    response_format: str | None  # "json" for JSON mode, a schema as canonical JSON, or None
    extra_body: Mapping[str, Any] = field(default_factory=dict)  # the model's extra fields

    def fingerprint(self) -> str:
        payload = {
            "v": FINGERPRINT_VERSION,
            "provider": self.provider,
            "upstream_model": self.upstream_model,
            "messages": [list(m) for m in self.messages],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "response_format": self.response_format,
            "extra_body": dict(self.extra_body),
        }
        # Canonical JSON: key order and spacing never change the fingerprint.
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()


FINGERPRINT_FIELDS = tuple(f.name for f in dataclasses.fields(RequestKey))
