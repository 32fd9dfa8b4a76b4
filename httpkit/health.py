"""Liveness and readiness."""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import msgspec
from litestar import Request, Response, get
from litestar.openapi import ResponseSpec
from sqlalchemy import text

from store.runtime import Runtime


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
    runtime: Runtime = request.app.state.runtime
    checks: dict[str, str] = {}

    async def database() -> None:
        async with runtime.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    checks["database"] = await _check(database)
    if runtime.redis is not None:
        redis = runtime.redis

        async def ping() -> None:
            await redis.ping()

        checks["redis"] = await _check(ping)
    ok = all(v == "ok" for v in checks.values())
    return Response(Health(status="ok" if ok else "unavailable", checks=checks), status_code=200 if ok else 503)


CHECK_TIMEOUT = 2.0  # seconds: a frozen dependency makes the instance unready, not the probe hang


async def _check(probe: Callable[[], Awaitable[None]]) -> str:
    try:
        await asyncio.wait_for(probe(), CHECK_TIMEOUT)
    except asyncio.TimeoutError:
        return "unavailable: timeout"
    except Exception as exc:
        return f"unavailable: {type(exc).__name__}"
    return "ok"
