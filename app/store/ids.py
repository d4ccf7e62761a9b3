"""Time-ordered identifiers for jobs: newest-first listing and cursors need no extra column."""

from __future__ import annotations

import os
import time

# Crockford base32: no I, L, O, U, so ids read back unambiguously.
_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def new_job_id() -> str:
    """A 26-character ULID-style id: 48 bits of milliseconds, then 80 random bits.

    Lexicographic order is creation order (to the millisecond), across processes and replicas.
    """
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))
