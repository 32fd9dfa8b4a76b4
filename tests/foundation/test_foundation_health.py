"""Liveness and readiness."""
from __future__ import annotations

import socket
from typing import Any

import pytest

from tests.conftest import serve_app


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port  # nothing listens there now


async def test_healthz_is_ok_without_credentials(client: Any) -> None:
    r = await client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert r.headers["x-request-id"]


async def test_readyz_checks_database_and_redis_when_configured(client: Any, backend: str) -> None:
    r = await client.get("/readyz")
    assert r.status_code == 200, r.text
    checks = r.json()["checks"]
    assert checks["database"] == "ok"
    if backend == "postgres":
        assert checks["redis"] == "ok"
    else:
        assert "redis" not in checks  # embedded mode: no Redis to check


async def test_readyz_is_503_when_redis_is_unreachable(settings: Any) -> None:
    from bastion.app import create_app
    from store.runtime import make_redis

    app = create_app(settings)
    async with serve_app(app) as c:
        rt = app.state.runtime
        real = rt.redis
        rt.redis = make_redis(f"redis://127.0.0.1:{closed_port()}/0")
        try:
            r = await c.get("/readyz")
        finally:
            await rt.redis.aclose()
            rt.redis = real
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["status"] == "unavailable"
        assert body["checks"]["database"] == "ok"
        assert body["checks"]["redis"].startswith("unavailable")
        assert (await c.get("/healthz")).status_code == 200  # alive, just not ready


async def test_readyz_is_503_when_the_database_is_unreachable(settings: Any) -> None:
    from bastion.app import create_app
    from store.db import make_engine

    app = create_app(settings)
    async with serve_app(app) as c:
        rt = app.state.runtime
        real = rt.engine
        rt.engine = make_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{closed_port()}/nope")
        try:
            r = await c.get("/readyz")
        finally:
            await rt.engine.dispose()
            rt.engine = real
        assert r.status_code == 503, r.text
        assert r.json()["checks"]["database"].startswith("unavailable")
        assert (await c.get("/readyz")).status_code == 200


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_readyz_is_503_for_an_unopenable_sqlite_file(settings_factory: Any, tmp_path: Any) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    from bastion.app import create_app

    app = create_app(settings_factory())
    async with serve_app(app) as c:
        rt = app.state.runtime
        real = rt.engine
        blocker = tmp_path / "file-not-dir"
        blocker.write_text("x")
        # A path under a regular file: SQLite cannot open it.
        rt.engine = create_async_engine(f"sqlite+aiosqlite:///{blocker}/db.sqlite")
        try:
            r = await c.get("/readyz")
        finally:
            await rt.engine.dispose()
            rt.engine = real
        assert r.status_code == 503 and r.json()["checks"]["database"].startswith("unavailable")


async def test_readyz_does_not_hang_on_a_frozen_dependency(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    import httpkit.health
    from bastion.app import create_app

    class FrozenRedis:
        async def ping(self) -> None:
            await asyncio.Event().wait()  # never answers

    monkeypatch.setattr(httpkit.health, "CHECK_TIMEOUT", 0.2)
    app = create_app(settings)
    async with serve_app(app) as c:
        rt = app.state.runtime
        real = rt.redis
        rt.redis = FrozenRedis()
        try:
            r = await c.get("/readyz")
        finally:
            rt.redis = real
        assert r.status_code == 503
        assert r.json()["checks"]["redis"] == "unavailable: timeout"
