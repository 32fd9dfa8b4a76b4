"""The console's router (``/console``), mounted by the app factory next to the API."""
from __future__ import annotations

from litestar import Router

from console import approval_pages, auth_pages, static_files
from console.errors import console_error

PREFIX = "/console"


def console_router() -> Router:
    # Not in the OpenAPI document: these are pages; every capability they offer is also an
    # API operation.
    return Router(path=PREFIX, route_handlers=[*auth_pages.ROUTES, *approval_pages.ROUTES, *static_files.ROUTES],
                  include_in_schema=False, tags=["console"], exception_handlers={Exception: console_error})
