"""Liveness and readiness."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import msgspec
from litestar import Request, Response, get
from litestar.openapi import ResponseSpec


class Probed(Protocol):
    """What readiness needs of the process's runtime (store.runtime.Runtime): no SQL here."""

    def probes(self) -> Mapping[str, Callable[[], Awaitable[None]]]: ...


class Health(msgspec.Struct):
    status: str
    checks: dict[str, str] = {}


@get("/healthz", tags=["health"], summary="Process is alive", security=[{}], opt={"no_error_docs": True})
async def healthz() -> Health:
    return Health(status="ok")


@get(
    "/readyz",
    tags=["health"],
    summary="Database and (when configured) Redis reachable",
    security=[{}],
    opt={"no_error_docs": True},
    responses={503: ResponseSpec(Health, generate_examples=False, description="A dependency is unreachable.")},
)
async def readyz(request: Request[Any, Any, Any]) -> Response[Health]:
    runtime: Probed = request.app.state.runtime
    checks: dict[str, str] = {}
    for name, probe in runtime.probes().items():  # one after the other, as before: database, redis
        checks[name] = await _check(probe)
    ok = all(v == "ok" for v in checks.values())
    return Response(Health(status="ok" if ok else "unavailable", checks=checks), status_code=200 if ok else 503)


CHECK_TIMEOUT = 2.0  # seconds: a frozen dependency makes the instance unready, not the probe hang


async def _check(probe: Callable[[], Awaitable[None]]) -> str:
    try:
        await asyncio.wait_for(probe(), CHECK_TIMEOUT)
    except TimeoutError:
        return "unavailable: timeout"
    except Exception as exc:
        return f"unavailable: {type(exc).__name__}"
    return "ok"
