"""The combined server: gateway and management API in one process (the default)."""
from __future__ import annotations

from litestar import Litestar, Router

from api.app import api_routes
from core.settings import Settings, load_settings
from gateway.app import gateway_hooks, gateway_routes
from httpkit.app import build_app
from httpkit.health import healthz, readyz
from store.runtime import Runtime


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> Litestar:
    settings = settings or load_settings()
    runtime = runtime or Runtime.build(settings)
    start, stop = gateway_hooks()
    # The gateway's routes keep their own (smaller) body cap; everything else gets the API's.
    gateway = Router(path="/", route_handlers=gateway_routes(), request_max_body_size=settings.gateway_max_body)
    return build_app(
        runtime,
        [healthz, readyz, gateway, *api_routes()],
        title="Bastion",
        on_startup=start,
        on_shutdown=stop,
    )


def asgi() -> Litestar:
    """Factory for uvicorn workers (``bastion.app:asgi``): settings from the environment."""
    from httpkit.context import configure_logging

    settings = load_settings()
    configure_logging(settings.log_level)
    return create_app(settings)
