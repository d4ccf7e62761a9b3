"""Logging: plain text or one JSON object per line, and one line per job state change.

Log lines carry `job_id` / `agent_id` as fields. Events carry redacted error messages and
settings are never logged; a filter on the handler masks any configured key regardless.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from app.events.bus import StoredEvent
from app.text import SECRETS

# Attributes every LogRecord has; anything else was passed with `extra=` and is a field.
# uvicorn's `color_message` is its message again, with terminal colours.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}
# Loggers that servers configure with handlers of their own: they go through ours instead,
# so that every line the service prints has one format (one JSON object per line in json).
_SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "alembic")

events_log = logging.getLogger("app.events")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                body[key] = value
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, ensure_ascii=False, default=str)


class RedactSecrets(logging.Filter):
    """The last guard: a configured upstream key, whole or in part, never reaches a log line
    (the message, its fields, or a traceback), whatever logged it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = SECRETS.mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        for key, value in vars(record).items():
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, SECRETS.mask(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = SECRETS.mask(_FORMATTER.formatException(record.exc_info))
        return True


_FORMATTER = logging.Formatter()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [
            f"{k}={v}"
            for k, v in vars(record).items()
            if k not in _STANDARD and not k.startswith("_") and v is not None
        ]
        return f"{line} [{' '.join(extras)}]" if extras else line


def configure_logging(fmt: str = "text", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_swarm", False):
            root.removeHandler(old)
    handler._swarm = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in _SERVER_LOGGERS:
        server_logger = logging.getLogger(name)
        if server_logger.handlers:  # none (and no propagation): turned off, e.g. the access log
            for old in list(server_logger.handlers):
                server_logger.removeHandler(old)
            server_logger.propagate = True
    # One line per upstream request would drown the log (and cost CPU) at swarm scale.
    for noisy in ("httpx2", "openai", "aiohttp.access", "mcp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def log_events(events: list[StoredEvent]) -> None:
    """One log line per committed state change."""
    if not events_log.isEnabledFor(logging.INFO):
        return
    for e in events:
        fields: dict[str, Any] = {"job_id": e.job_id, "event": e.type, "seq": e.seq}
        if e.agent_id is not None:
            fields["agent_id"] = e.agent_id
        for key in ("attempt", "reason", "error", "delay_s", "latency_ms"):
            if key in e.data:
                fields[key] = e.data[key]
        events_log.info(e.type, extra=fields)
