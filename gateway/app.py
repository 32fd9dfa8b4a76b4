"""The gateway's routes and a stand-alone app (``bastion serve --only gateway``)."""
from __future__ import annotations

from typing import Any

from litestar import Litestar

from core.settings import Settings
from httpkit.app import build_app
from httpkit.health import healthz, readyz
from store.runtime import Runtime


def gateway_routes(settings: Settings | None = None) -> list[Any]:
    """The gateway's route handlers. ``settings`` sets the decision endpoints' body cap; the
    handlers also enforce ``Settings.gateway_max_body`` of the running app themselves."""
    from gateway import approval_routes, routes, token_routes

    # Without settings the caller's enclosing router sets the cap (bastion/app.py does).
    max_body = settings.gateway_max_body if settings is not None else None
    return [routes.router(max_body), *approval_routes.ROUTES, *token_routes.ROUTES]


def gateway_hooks() -> tuple[list[Any], list[Any]]:
    """Start-up and shut-down hooks the gateway needs (state loading, listeners)."""
    from gateway.token_routes import start_tokens, stop_tokens
    from store.audit_writer import start_audit, stop_audit  # first up, last down: decisions record into it

    # Tokens first: the decision pipeline uses their verifier (claims cache + revocations).
    return [start_audit, start_tokens, start_decisions], [stop_audit, stop_decisions, stop_tokens]


async def start_decisions(app: Litestar) -> None:
    """The decision state (lazy per-org snapshots, change listener, version poll) and quotas."""
    from gateway.service import Gateway

    tokens = getattr(app.state, "tokens", None)
    gateway = Gateway(app.state.runtime, cap_verifier=getattr(tokens, "verifier", None), audit=getattr(app.state, "audit", None))
    app.state.gateway = gateway
    await gateway.start()


async def stop_decisions(app: Litestar) -> None:
    gateway = getattr(app.state, "gateway", None)
    if gateway is not None:
        await gateway.stop()


def create_gateway_app(settings: Settings, runtime: Runtime | None = None) -> Litestar:
    runtime = runtime or Runtime.build(settings)
    start, stop = gateway_hooks()
    return build_app(
        runtime,
        [healthz, readyz, *gateway_routes(settings)],
        title="Bastion gateway",
        on_startup=start,
        on_shutdown=stop,
        max_body=settings.gateway_max_body,
    )
