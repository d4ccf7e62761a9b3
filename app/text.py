"""Text that every layer must be able to store and send.

A NUL (PostgreSQL's text type refuses it) or a lone UTF-16 surrogate (not encodable as
UTF-8, so neither storable nor sendable in a JSON request) can reach the service in an
upstream's answer or error message, decoded from JSON escapes. Such characters become
U+FFFD, so a stray character can never make a write or a dependent's request fail.
"""

from __future__ import annotations

import re

_UNSAFE = re.compile("[\\x00\\ud800-\\udfff]")


def clean_text(text: str) -> str:
    """`text` with every NUL and lone surrogate replaced by U+FFFD."""
    return _UNSAFE.sub("\ufffd", text) if _UNSAFE.search(text) else text
