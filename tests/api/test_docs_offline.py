"""The interactive API docs work offline: /docs (Swagger UI) and /redoc load their scripts,
styles and icon from the service itself, never from a CDN."""

from __future__ import annotations

import re

import pytest

from tests.helpers.service import Service

# Every URL a page loads: src= and href= attributes, and Swagger UI's `url: '…'` option.
_URLS = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|\burl:\s*'([^']+)'""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_pages_load_only_local_assets_and_each_answers(
    service: Service, page: str
) -> None:
    response = await service.client.get(page)
    assert response.status_code == 200
    html = response.text
    assert "://" not in html  # no absolute URL at all: no CDN, no fonts, no validator
    urls = [a or b for a, b in _URLS.findall(html)]
    assert any(u.endswith(".js") for u in urls), urls
    for url in urls:
        assert url.startswith("/"), url
        asset = await service.client.get(url)
        assert asset.status_code == 200, url
        assert asset.content, url


async def test_swagger_ui_does_not_call_the_online_validator(service: Service) -> None:
    html = (await service.client.get("/docs")).text
    assert '"validatorUrl": null' in html
