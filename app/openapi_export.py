"""Prints the OpenAPI document of the app (`make openapi` writes it to openapi/openapi.json)."""

from __future__ import annotations

import json
from typing import Any

from app.config import Settings


def openapi_document() -> dict[str, Any]:
    from app.main import create_app

    return create_app(Settings()).openapi()


def render() -> str:
    return json.dumps(openapi_document(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    print(render(), end="")
