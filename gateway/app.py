"""The gateway's routes and a stand-alone app (``bastion serve --only gateway``)."""
from __future__ import annotations

from typing import Any

from litestar import Litestar

from core.settings import Settings
from httpkit.app import build_app
from httpkit.health import healthz, readyz
from store.runtime import Runtime


def gateway_routes() -> list[Any]:
    from gateway import approval_routes, token_routes

    return [*approval_routes.ROUTES, *token_routes.ROUTES]


def gateway_hooks() -> tuple[list[Any], list[Any]]:
    """Start-up and shut-down hooks the gateway needs (state loading, listeners)."""
    from gateway.token_routes import start_tokens, stop_tokens

    return [start_tokens], [stop_tokens]


def create_gateway_app(settings: Settings, runtime: Runtime | None = None) -> Litestar:
    runtime = runtime or Runtime.build(settings)
    start, stop = gateway_hooks()
    return build_app(
        runtime,
        [healthz, readyz, *gateway_routes()],
        title="Bastion gateway",
        on_startup=start,
        on_shutdown=stop,
        max_body=settings.gateway_max_body,
    )
