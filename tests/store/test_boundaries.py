"""Where code may reach: SQL only in the store, no import cycle between the store and the
event bus, and route modules that never import each other."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "app"
# Building statements is SQL; a type annotation or a URL helper is not.
SQL_NAMES = {"select", "insert", "update", "delete", "text", "func", "bindparam", "Table"}
ROUTE_MODULES = [
    "app.jobs.router",
    "app.jobs.stream",
    "app.api.health",
    "app.api.metrics_routes",
    "app.api.upstream",
    "app.webhooks.router",
    "app.ui.routes",
]


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((a.name, []) for a in node.names)
    return found


def test_sql_is_built_only_in_the_store() -> None:
    offenders = []
    for path in APP.rglob("*.py"):
        if path.is_relative_to(APP / "store"):
            continue
        for module, names in _imports(path):
            if module.startswith("sqlalchemy") and (not names or SQL_NAMES & set(names)):
                offenders.append(f"{path.relative_to(APP)}: from {module} import {names}")
    assert offenders == []


def test_the_events_package_does_not_import_the_store() -> None:
    # The store imports app.events (the bus it publishes to): the other way would be a cycle.
    code = (
        "import importlib, pkgutil, sys, app.events\n"
        "for m in pkgutil.iter_modules(app.events.__path__):\n"
        "    importlib.import_module('app.events.' + m.name)\n"
        "print(sorted(m for m in sys.modules if m.startswith('app.store')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_route_modules_do_not_import_each_other() -> None:
    for name in ROUTE_MODULES:
        path = APP.parent / (name.replace(".", "/") + ".py")
        imported = {module for module, _ in _imports(path)}
        assert imported.isdisjoint(set(ROUTE_MODULES) - {name}), name


def test_routes_do_not_read_the_store_or_decode_columns() -> None:
    for name in ["app.jobs.router", "app.webhooks.router", "app.ui.routes"]:
        path = APP.parent / (name.replace(".", "/") + ".py")
        source = path.read_text()
        assert "store.read(" not in source, name
        assert "json.loads" not in source and "loads(" not in source, name
