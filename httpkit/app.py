"""Builds a Litestar app with Bastion's conventions; the gateway and the management API
(and the combined server) are all made by this one function."""
from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin
from litestar.types import ControllerRouterHandler

from httpkit.auth import Authenticator
from httpkit.context import RequestContext
from httpkit.errors import EXCEPTION_HANDLERS
from httpkit.ratelimit import OrgRateLimiter
from store.runtime import Runtime

Hook = Callable[[Litestar], Awaitable[None]]


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
        lifespan=[lifespan],
        request_max_body_size=max_body or runtime.settings.api_max_body,
        openapi_config=OpenAPIConfig(
            title=title,
            version="1.0.0",
            path="/schema",
            render_plugins=[ScalarRenderPlugin()],
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
    return app


def state_of(app: Litestar) -> Any:
    return app.state
