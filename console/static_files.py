"""The console's CSS and JavaScript, shipped in the package (no CDN: the console works
air-gapped) and read once at import. Only the names listed here are served."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from litestar import Request, get
from litestar.response import Response

from console.render import SECURITY_HEADERS
from core.errors import NotFound

_DIR = Path(__file__).resolve().parent / "static"
_TYPES = {"console.css": "text/css; charset=utf-8", "console.js": "text/javascript; charset=utf-8"}
_FILES = {name: (_DIR / name).read_bytes() for name in _TYPES}
_ETAGS = {name: '"' + hashlib.sha256(body).hexdigest()[:32] + '"' for name, body in _FILES.items()}


@get("/static/{name:str}")
async def static_file(request: Request[Any, Any, Any], name: str) -> Response[bytes]:
    body = _FILES.get(name)
    if body is None:
        raise NotFound()
    headers = {**SECURITY_HEADERS, "ETag": _ETAGS[name], "Cache-Control": "no-cache"}
    if request.headers.get("if-none-match") == _ETAGS[name]:
        return Response(content=b"", status_code=304, headers=headers)
    return Response(content=body, media_type=_TYPES[name], headers=headers)


ROUTES = [static_file]
