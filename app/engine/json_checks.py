"""Checks shared by the request models of the job graph, stricter than pydantic's own: a
number must be a JSON number, and a free-form object must be storable as UTF-8."""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError, ValidationInfo
from pydantic_core import PydanticCustomError


def json_number(value: Any) -> Any:
    # Lax validation would take `true` as 1 and "3" as 3; the schema says number.
    if isinstance(value, bool | str):
        raise PydanticCustomError(
            "number_type", "Input should be a number, not {kind}", {"kind": type(value).__name__}
        )
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")


def storable_json_object(value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
    """Refuse a lone UTF-16 surrogate anywhere in a free-form object, in a key or a value:
    JSON can carry one as an escape (``"\\ud800"``), but it cannot be stored or sent on as
    UTF-8. Iterative, so a deeply nested object cannot exhaust the stack."""
    stack: list[tuple[Any, str]] = [(value, str(info.field_name))]
    while stack:
        item, where = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and _SURROGATE.search(key):
                    raise _unencodable(f"a key of {_ascii(where)}")
                stack.append((child, f"{where}.{key}"))
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{k}]") for k, child in enumerate(item))
        elif isinstance(item, str) and _SURROGATE.search(item):
            raise _unencodable(f"the value at {_ascii(where)}")
    return value


def _ascii(path: str) -> str:
    # The path itself may hold the surrogate (a key above the bad value): escape it.
    shown = path.encode("ascii", "backslashreplace").decode()
    return shown if len(shown) <= 200 else shown[:200] + "…"


def _unencodable(what: str) -> PydanticCustomError:
    return PydanticCustomError(
        "unencodable",
        "{what} holds a lone UTF-16 surrogate escape (such as \\ud800), which is not "
        "valid Unicode and cannot be stored as UTF-8; remove it or pair it",
        {"what": what},
    )


def first_problem(exc: ValidationError, type_: str | None = None) -> PydanticCustomError:
    """The first error of a nested model's validation, as one error of the field holding it
    (its path inside the field prefixed), rather than one per member of a union."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return PydanticCustomError(
        type_ or str(first["type"]),
        "{where}{msg}",
        {"where": f"{where}: " if where else "", "msg": first["msg"]},
    )
