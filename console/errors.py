"""Errors on console routes: the API's error body, shown as a page to a browser that navigates.

Every error is first mapped exactly as on the API (httpkit.errors: the same codes, statuses,
messages and request id). A GET that asks for HTML (a person following a link) gets that error
as a page with a way back; everything else (form posts, the live list, the event stream)
keeps the JSON body, so scripts and tests read the same thing the API returns.
"""
from __future__ import annotations

from typing import Any

from litestar import Request, Response

from console.render import SECURITY_HEADERS, page
from httpkit.errors import handle_exception


def _wants_page(request: Request[Any, Any, Any]) -> bool:
    return (request.method == "GET" and "text/html" in request.headers.get("accept", "")
            and not request.url.path.endswith("/stream") and "partial" not in request.query_params)


def console_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    response = handle_exception(request, exc)
    body = response.content
    if not _wants_page(request):
        response.headers.update(SECURITY_HEADERS)
        return response
    html = page("error.html", status_code=response.status_code or 500, code=body.code, message=body.message,
                request_id=body.request_id, details=body.details)
    # Retry-After and the like travel with the page too.
    html.headers.update({k: v for k, v in response.headers.items() if k.lower() not in {"content-type", "content-length"}})
    return html
