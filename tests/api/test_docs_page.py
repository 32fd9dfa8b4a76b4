"""The docs page (``GET /schema``) is served entirely by Bastion: its HTML names no other
origin, every asset it references is served here (200, pinned from the swagger-ui-py package),
and a Content-Security-Policy without third-party origins covers it."""
from __future__ import annotations

import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

EXPECTED_CSP = {
    "default-src": ["'none'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "img-src": ["'self'", "data:"],
    "font-src": ["'self'"],
    "connect-src": ["'self'"],
    "base-uri": ["'none'"],
    "form-action": ["'none'"],
    "frame-ancestors": ["'none'"],
}


class _Refs(HTMLParser):
    """Every URL-bearing attribute of the page, and whether it has inline script or style."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.inline: list[str] = []
        self._tag: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._tag = tag
        for name, value in attrs:
            if name in ("src", "href", "action", "data", "poster", "srcset") or name.startswith("data-") and "url" in name:
                self.refs.append((tag, name, value or ""))
            if name == "style" or name.startswith("on"):
                self.inline.append(f"{tag} {name}")

    def handle_data(self, data: str) -> None:
        if self._tag in ("script", "style") and data.strip():
            self.inline.append(f"<{self._tag}> content")

    def handle_endtag(self, tag: str) -> None:
        self._tag = None


def _csp(header: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            out[words[0]] = words[1:]
    return out


@pytest.fixture
async def docs_client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    # The docs routes touch neither the database nor Redis: no lifespan needed.
    from bastion.app import create_app
    from core.settings import load_settings

    settings = load_settings(env={}, database_url=f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", redis_url=None,
                             data_dir=tmp_path / "data")
    app = create_app(settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as c:
        yield c


async def test_docs_page_references_no_external_origin(docs_client: httpx.AsyncClient) -> None:
    r = await docs_client.get("/schema")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    # No absolute or protocol-relative URL anywhere in the page.
    assert "://" not in html, html
    assert not re.search(r"""(?:src|href)\s*=\s*["']?//""", html), html
    page = _Refs()
    page.feed(html)
    assert page.inline == [], "inline script or style would need 'unsafe-inline'"
    scripts = [v for tag, name, v in page.refs if tag == "script"]
    assert len(scripts) >= 2 and any(v.endswith("swagger-ui-bundle.js") for v in scripts)
    for _, _, value in page.refs:
        assert value.startswith("/") and not value.startswith("//"), value


async def test_docs_page_has_a_strict_content_security_policy(docs_client: httpx.AsyncClient) -> None:
    for path in ("/schema", "/schema/swagger"):
        r = await docs_client.get(path)
        assert r.status_code == 200
        header = r.headers.get("content-security-policy")
        assert header, path
        assert _csp(header) == EXPECTED_CSP, header
        assert "unsafe" not in header and "http" not in header and "*" not in header
        assert r.headers["x-content-type-options"] == "nosniff"


async def test_every_asset_of_the_page_is_served_here(docs_client: httpx.AsyncClient) -> None:
    import importlib.metadata

    page = _Refs()
    page.feed((await docs_client.get("/schema")).text)
    kinds = {"script": "text/javascript", "link": None}
    fetched = 0
    for tag, name, value in page.refs:
        r = await docs_client.get(value)
        assert r.status_code == 200, (value, r.status_code)
        assert r.content, value
        assert r.headers.get("content-security-policy"), value
        assert r.headers["x-content-type-options"] == "nosniff"
        if tag == "script":
            assert r.headers["content-type"].startswith(kinds["script"]), value
        if value.endswith(".css"):
            assert r.headers["content-type"].startswith("text/css"), value
        if name == "data-openapi-url":
            assert r.json()["openapi"].startswith("3."), value
        fetched += 1
    assert fetched >= 5  # icon, stylesheet, two scripts, the document
    # The bundle is the pinned package's file, byte for byte (no copy of it lives in the repo).
    dist = importlib.metadata.distribution("swagger-ui-py")
    bundle = Path(str(dist.locate_file("swagger_ui/static/swagger-ui-bundle.js"))).read_bytes()
    assert (await docs_client.get("/schema/assets/swagger-ui-bundle.js")).content == bundle
    # Our setup script: no third-party URL, the public validator badge off.
    setup = (await docs_client.get("/schema/assets/bastion-docs.js")).text
    assert "://" not in setup and "validatorUrl: null" in setup


@pytest.mark.parametrize("name", ["nope.js", "index.css", "swagger-editor-bundle.js", "..%2f..%2fcore%2fsettings.py",
                                  "LICENSE", "swagger-initializer.js"])
async def test_only_the_listed_assets_are_served(docs_client: httpx.AsyncClient, name: str) -> None:
    r = await docs_client.get(f"/schema/assets/{name}")
    assert r.status_code == 404


def test_gateway_only_app_serves_the_same_page(tmp_path: Path) -> None:
    import asyncio

    from core.settings import load_settings
    from gateway.app import create_gateway_app

    settings = load_settings(env={}, database_url=f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", redis_url=None,
                             data_dir=tmp_path / "data")
    app = create_gateway_app(settings)

    async def fetch() -> Any:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await c.get("/schema"), await c.get("/schema/assets/swagger-ui.css")

    page, css = asyncio.run(fetch())
    assert page.status_code == 200 and "://" not in page.text and page.headers["content-security-policy"]
    assert css.status_code == 200
