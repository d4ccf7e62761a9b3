"""Small formatting helpers shared by the commands: numbers, money, durations, errors."""

from __future__ import annotations

from typing import Any

STATUS_STYLE = {
    "queued": "dim",
    "pending": "dim",
    "running": "cyan",
    "completed": "green",
    "failed": "red",
    "skipped": "yellow",
    "cancelled": "magenta",
    "ok": "green",
    "degraded": "yellow",
    "auth_failed": "red",
    "forbidden": "red",
    "unreachable": "red",
    "timeout": "red",
    "error": "red",
}

# An error in a one-line view: enough to recognise it; the full text is in the summary.
SHORT_ERROR_CHARS = 160


def number(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "-"


def cost(value: Any) -> str:
    if not isinstance(value, int | float):
        return "unknown"
    return f"${value:,.4f}" if value < 10 else f"${value:,.2f}"


def spent_text(total: float, priced: int, unpriced: int) -> str:
    """Money spent so far, honest about agents whose model has no price."""
    if unpriced and not priced:
        return "unknown (no price for the model)"
    text = cost(total)
    return text + f" (+{unpriced} unpriced)" if unpriced else text


def duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def short_error(error: Any, limit: int = SHORT_ERROR_CHARS) -> str:
    text = " ".join(str(error or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
