"""The dashboard's bundle as the service serves it: the client-side routes get index.html,
the assets are the package's own (no CDN), nothing else under /ui/ exists, and the bundle is
built from the sources in ui/ as they are now."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.config import Settings
from app.ui.routes import STATIC
from tests.helpers.processes import ROOT
from tests.helpers.service import Service, make_settings, start_service

UI = ROOT / "ui"
# As ui/scripts/source-hash.mjs hashes them.
_TOP = ["index.html", "package.json", "package-lock.json", "tsconfig.json", "vite.config.ts"]
_DIRS = ["src", "scripts"]


@pytest.fixture
async def app_service(tmp_path: Path, fake_upstream: object) -> AsyncIterator[Service]:
    settings: Settings = make_settings(tmp_path)
    async for svc in start_service(settings):
        yield svc


def source_hash() -> str:
    files = [UI / f for f in _TOP] + [p for d in _DIRS for p in (UI / d).rglob("*") if p.is_file()]
    digest = hashlib.sha256()
    for rel in sorted(p.relative_to(UI).as_posix() for p in files):
        digest.update(rel.encode() + b"\0")
        digest.update((UI / rel).read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def test_the_committed_bundle_is_built_from_the_current_sources() -> None:
    built = (STATIC / "source-hash.txt").read_text().strip()
    assert built == source_hash(), (
        "app/ui/static is out of step with ui/: run `make ui` and commit the bundle"
    )


@pytest.mark.parametrize(
    "path", ["/ui", "/ui/", "/ui/jobs/01m8abc", "/ui/jobs/01m8abc/", "/ui/upstream"]
)
async def test_client_side_routes_get_the_index_page(app_service: Service, path: str) -> None:
    response = await app_service.client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert '<div id="app"' in response.text or '<main id="app"' in response.text
    assert "default-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["cache-control"] == "no-cache"


async def test_the_page_loads_only_its_own_assets(app_service: Service) -> None:
    html = (await app_service.client.get("/ui/")).text
    assert "://" not in html  # no CDN, no font service
    urls = re.findall(r"""(?:src|href)=["'](/ui/assets/[^"']+)["']""", html)
    assert any(u.endswith(".js") for u in urls) and any(u.endswith(".css") for u in urls)
    for url in urls:
        asset = await app_service.client.get(url)
        assert asset.status_code == 200, url
        assert asset.content
        assert "immutable" in asset.headers["cache-control"]


@pytest.mark.parametrize(
    "path",
    [
        "/ui/nothing-here",
        "/ui/assets/missing.js",
        "/ui/assets/..%2F__init__.py",
        "/ui/assets/../routes.py",
        "/ui/source-hash.txt",
        "/ui/jobs/a/b",
    ],
)
async def test_anything_else_under_ui_is_a_404(app_service: Service, path: str) -> None:
    response = await app_service.client.get(path)
    assert response.status_code == 404
    assert "detail" in response.json()


async def test_the_dashboard_is_not_part_of_the_api_document(app_service: Service) -> None:
    paths = (await app_service.client.get("/openapi.json")).json()["paths"]
    assert not [p for p in paths if p.startswith("/ui")]


async def test_head_of_the_page_is_answered(app_service: Service) -> None:
    response = await app_service.client.head("/ui/jobs/x")
    assert response.status_code == 200
    assert response.content == b""
