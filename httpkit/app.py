"""Builds a Litestar app with Bastion's conventions; the gateway and the management API
(and the combined server) are all made by this one function."""
from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Protocol

from litestar import Litestar
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.spec import Components, SecurityScheme
from litestar.routes import HTTPRoute
from litestar.types import ControllerRouterHandler

from core.settings import Settings
from httpkit.auth import Authenticator, management_credentials
from httpkit.context import RequestContext
from httpkit.docs_page import DocsPage, docs_router
from httpkit.errors import EXCEPTION_HANDLERS, ErrorBody
from httpkit.ratelimit import OrgRateLimiter
from httpkit.request import BastionRequest

Hook = Callable[[Litestar], Awaitable[None]]


class Runtime(Protocol):
    """What the app needs of the process's runtime (store.runtime.Runtime is one): started
    and closed with the app; the Authenticator uses the rest. httpkit never imports store."""

    settings: Settings

    async def start(self) -> None: ...

    async def close(self) -> None: ...


def build_app(
    runtime: Runtime,
    route_handlers: Sequence[ControllerRouterHandler],
    *,
    title: str,
    on_startup: Sequence[Hook] = (),
    on_shutdown: Sequence[Hook] = (),
    max_body: int | None = None,
) -> Litestar:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await runtime.start()
        for hook in on_startup:
            await hook(app)
        try:
            yield
        finally:
            for hook in reversed(on_shutdown):
                await hook(app)
            await runtime.close()

    app = Litestar(
        route_handlers=list(route_handlers),
        exception_handlers=EXCEPTION_HANDLERS,
        request_class=BastionRequest,
        guards=[management_credentials],
        lifespan=[lifespan],
        request_max_body_size=max_body or runtime.settings.api_max_body,
        openapi_config=OpenAPIConfig(
            title=title,
            version="1.0.0",
            path="/schema",
            # The docs page's assets come from this server (pinned), never from a CDN.
            render_plugins=[DocsPage(title)],
            openapi_router=docs_router("/schema"),
            components=Components(
                security_schemes={
                    "ApiKey": SecurityScheme(
                        type="apiKey", name="X-API-Key", security_scheme_in="header",
                        description="An organization API key (bst_...).",
                    ),
                    "Session": SecurityScheme(
                        type="http", scheme="bearer", bearer_format="JWT",
                        description="A session token from POST /api/v1/auth/login.",
                    ),
                }
            ),
            security=[{"ApiKey": []}, {"Session": []}],
        ),
        debug=False,
        logging_config=None,
    )
    # Tests drive this directly (Litestar's own lifespan runs an anyio task group that must be
    # entered and exited in one task, which async pytest fixtures do not guarantee).
    app.state.lifespan = lifespan
    app.state.runtime = runtime
    app.state.settings = runtime.settings
    app.state.authenticator = Authenticator(runtime)
    app.state.rate_limiter = OrgRateLimiter(runtime.settings)
    # Outermost: request ids and access logs for every response, unknown routes included.
    app.asgi_handler = RequestContext(app.asgi_handler)  # type: ignore[assignment]
    document_errors(app)
    return app


ERROR_DESCRIPTIONS = {
    400: "VALIDATION_ERROR: the body or query parameters failed validation (or malformed JSON).",
    401: "AUTHENTICATION_REQUIRED: missing, invalid, expired or revoked credentials.",
    403: "PERMISSION_DENIED: the caller's role may not do this.",
    404: "NOT_FOUND: no such resource, or it belongs to another organization.",
    409: "CONFLICT: already exists, or the change conflicts with the current state.",
    413: "PAYLOAD_TOO_LARGE: the request body exceeds the configured cap.",
    422: "UNPROCESSABLE_ENTITY: well-formed but semantically invalid.",
    429: "RATE_LIMIT_EXCEEDED: over the organization's rate limit; see Retry-After.",
    503: "SERVICE_UNAVAILABLE: the database or Redis is unreachable; retry with backoff.",
}


def default_error_statuses(handler: HTTPRouteHandler, path: str) -> set[int]:
    """Which error responses a route can give, for the OpenAPI document. A handler can list
    its own with ``opt={"errors": [400, 404, ...]}``."""
    explicit = handler.opt.get("errors")
    if explicit is not None:
        return {int(s) for s in explicit}
    methods = {m.upper() for m in handler.http_methods}
    statuses = {400, 503}
    if not handler.opt.get("public"):
        statuses |= {401, 403, 429}
    if "{" in path:
        statuses.add(404)
    if methods & {"POST", "PUT", "PATCH"}:
        statuses |= {400, 413}
    if methods & {"POST", "PUT", "PATCH", "DELETE"} and "{" in path:
        statuses.add(409)
    return statuses


def document_errors(app: Litestar) -> None:
    """Describe the error responses of every API route with the real error body (Litestar
    would otherwise document its own ``{status_code, detail}`` shape for 400)."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            if not handler.include_in_schema or handler.opt.get("no_error_docs"):
                continue
            statuses = default_error_statuses(handler, route.path)
            responses = dict(handler.responses or {})
            for status in sorted(statuses):
                responses.setdefault(
                    status,
                    ResponseSpec(
                        data_container=ErrorBody,
                        generate_examples=False,
                        description=ERROR_DESCRIPTIONS.get(status, "Error."),
                    ),
                )
            handler.responses = responses
