"""The API reference page (``GET /schema``): Swagger UI, served by Bastion itself.

Why not a CDN: a security product's docs page must not run an unpinned third-party script (the
page shows API keys typed into "Authorize"), and it must work on an air-gapped network. The
page's assets come from the ``swagger-ui-py`` package, a pinned dependency (requirements/*.txt)
that ships swagger-ui's distribution files; nothing is fetched at run time. Only the files the
page uses are served, from a fixed list (no path from the request reaches the file system).

Every response under ``/schema`` carries a Content-Security-Policy that names no other origin:
scripts and styles only from this server (no inline script: the page's one line of setup is
``/schema/assets/bastion-docs.js``), API calls ("Try it out") only to this server.
"""
from __future__ import annotations

import importlib.metadata
from functools import cache
from html import escape
from pathlib import Path
from typing import Any

from litestar import Request, Response, Router, get
from litestar.datastructures import ResponseHeader
from litestar.exceptions import NotFoundException
from litestar.openapi.plugins import OpenAPIRenderPlugin

DIST = "swagger-ui-py"  # the PyPI package that ships swagger-ui's dist files
ASSETS_PATH = "/assets"  # under the OpenAPI path (/schema)

CSP = "; ".join((
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",  # swagger-ui's stylesheet draws its icons as data: URIs
    "font-src 'self'",
    "connect-src 'self'",  # the OpenAPI document and "Try it out"
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
))
SECURITY_HEADERS = [
    ResponseHeader(name="Content-Security-Policy", value=CSP),
    ResponseHeader(name="X-Content-Type-Options", value="nosniff"),
    ResponseHeader(name="Referrer-Policy", value="no-referrer"),
]

# Our own setup script: reads the document's URL from the page (so the script is a constant
# file, and the page needs no inline script) and turns off the public validator badge (it
# would send the document to a third party).
SETUP_JS = b"""window.addEventListener("load", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.getAttribute("data-openapi-url"),
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout"
  });
});
"""

# name -> (file in the package's static folder, or None for SETUP_JS; media type)
ASSETS: dict[str, tuple[str | None, str]] = {
    "swagger-ui.css": ("swagger-ui.css", "text/css"),
    "swagger-ui-bundle.js": ("swagger-ui-bundle.js", "text/javascript"),
    "favicon-32x32.png": ("favicon-32x32.png", "image/png"),
    "bastion-docs.js": (None, "text/javascript"),
}


def _static_dir() -> Path:
    # Located through the distribution's metadata: importing the package would pull in its
    # web-framework adapters, which Bastion does not use.
    return Path(str(importlib.metadata.distribution(DIST).locate_file("swagger_ui/static")))


@cache
def asset_bytes(name: str) -> bytes:
    filename, _ = ASSETS[name]
    if filename is None:
        return SETUP_JS
    return (_static_dir() / filename).read_bytes()


@get(f"{ASSETS_PATH}/{{name:str}}", include_in_schema=False, sync_to_thread=False)
def docs_asset(name: str) -> Response[bytes]:
    entry = ASSETS.get(name)
    if entry is None:
        raise NotFoundException()
    # The file names are not versioned, so a browser revalidates after an hour (an upgrade of
    # the pinned package then shows up without a stale mix of old and new files for long).
    return Response(asset_bytes(name), media_type=entry[1], headers={"Cache-Control": "public, max-age=3600"})


class DocsPage(OpenAPIRenderPlugin):
    """Swagger UI from this server's own assets (``ASSETS``)."""

    def __init__(self, title: str) -> None:
        super().__init__(path=["/swagger"], favicon="", style="")
        self.title = title

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        base = request.app.openapi_config.path or "/schema"
        assets = escape(f"{base}{ASSETS_PATH}")
        json_url = escape(self.get_openapi_json_route(request))
        return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(self.title)} API reference</title>
<link rel="icon" type="image/png" href="{assets}/favicon-32x32.png">
<link rel="stylesheet" href="{assets}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui" data-openapi-url="{json_url}"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script src="{assets}/bastion-docs.js"></script>
</body>
</html>
""".encode()

    def receive_router(self, router: Router) -> None:
        router.register(docs_asset)


def docs_router(path: str) -> Router:
    """The router Litestar adds the OpenAPI pages to (one per app): every response under it,
    the document and the assets included, carries the security headers; the document is
    completed (request bodies, ``httpkit.openapi``) before it is first served."""
    from httpkit.openapi import complete_before_serving

    return Router(path, route_handlers=[], include_in_schema=False, response_headers=SECURITY_HEADERS,
                  before_request=complete_before_serving)
