"""The machine's Redis as the tests use it: whether it answers, and removing the keys a
test wrote under its own prefix."""

from __future__ import annotations

import uuid

from redis import Redis

REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_answers() -> bool:
    client = Redis.from_url(REDIS_URL, socket_timeout=2)
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def new_prefix() -> str:
    """A key prefix no other test uses."""
    return f"swarmtest:{uuid.uuid4().hex[:10]}:"


def forget_keys(prefix: str) -> None:
    client = Redis.from_url(REDIS_URL, socket_timeout=2)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
