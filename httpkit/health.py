"""Liveness and readiness."""
from __future__ import annotations

from typing import Any

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
    try:
        async with runtime.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unavailable: {type(exc).__name__}"
    if runtime.redis is not None:
        try:
            await runtime.redis.ping()
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"unavailable: {type(exc).__name__}"
    ok = all(v == "ok" for v in checks.values())
    return Response(Health(status="ok" if ok else "unavailable", checks=checks), status_code=200 if ok else 503)
