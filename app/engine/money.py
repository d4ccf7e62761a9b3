"""US-dollar figures as shown to users: rounded to a billionth of a dollar, half up.

Costs are sums of tokens times price per million tokens in binary floating point, which leaves
noise in the last digits (0.05668380000000002). A billionth of a dollar is far below any
price step (a token of the cheapest model costs about 1e-8 dollars), so nothing real is
lost; half up (on the decimal value as written, not its binary approximation) means a
figure is never shown below what was computed by more than the noise itself.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated, Any

from pydantic import AfterValidator

# The precision of every USD figure the API and swarmctl show.
USD_QUANTUM = Decimal("1e-9")


def round_usd(value: float) -> float:
    """``value`` rounded to USD_QUANTUM, half up; non-finite values unchanged."""
    if value != value or value in (float("inf"), float("-inf")):
        return value
    return float(Decimal(repr(value)).quantize(USD_QUANTUM, rounding=ROUND_HALF_UP))


def round_usd_fields(value: Any) -> Any:
    """A JSON value with every number under a key ending in ``_usd`` rounded (nested)."""
    if isinstance(value, dict):
        return {
            k: round_usd(v) if k.endswith("_usd") and isinstance(v, float) else round_usd_fields(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [round_usd_fields(v) for v in value]
    return value


# A response field holding dollars: rounded when the model is built, so the JSON, the
# OpenAPI document (still a number) and any other dump agree.
Usd = Annotated[float, AfterValidator(round_usd)]
