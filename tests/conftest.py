"""Shared fixtures: real PostgreSQL and Redis (this machine's and CI's), fresh state per test.

Backends: ``sqlite`` = the embedded default (SQLite file, no Redis); ``postgres`` =
PostgreSQL + Redis, as in production. API tests take the ``client`` fixture and so run on both.

``tests/unit`` holds the tests of pure code; they need neither service:
``BASTION_TEST_NO_SERVICES=1 pytest tests/unit`` (``make unit``) runs them with no PostgreSQL or
Redis checked at start, and any network connection attempt fails the test that makes it.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

PG_HOST, PG_PORT = "127.0.0.1", 5432
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
PG_ADMIN_URL = f"postgresql+asyncpg://postgres@{PG_HOST}:{PG_PORT}/test"
# Each concurrent test run on one machine may pick its own DB (the fixture flushes it).
REDIS_DB = int(os.environ.get("BASTION_TEST_REDIS_DB", "15"))
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


PACKAGES = ("core", "policies", "audit", "store", "services", "httpkit", "gateway", "api", "console", "bastion")


def _imported_from_the_wheel() -> None:
    """Under ``make test`` (BASTION_TEST_FROM_WHEEL=1) every Bastion package must come from the
    installed wheel (site-packages), never from a source tree: otherwise the run would not
    prove that the wheel ships every module and data file."""
    import importlib
    import sysconfig

    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    elsewhere = {}
    for name in PACKAGES:
        path = Path(importlib.import_module(name).__file__ or "").resolve()
        if site not in path.parents:
            elsewhere[name] = str(path)
    if elsewhere:
        pytest.exit(f"BASTION_TEST_FROM_WHEEL=1, but not imported from {site}: {elsewhere}", returncode=3)


NO_SERVICES = os.environ.get("BASTION_TEST_NO_SERVICES") == "1"


class ServiceConnectionRefused(RuntimeError):
    """A test run under BASTION_TEST_NO_SERVICES=1 tried to open a network connection."""


def refuse_connections() -> Callable[[], None]:
    """From now on every socket connect (blocking, non-blocking and asyncio's, which calls
    ``connect`` on the socket) raises: a unit test that reaches for PostgreSQL or Redis fails
    loudly instead of passing because the services happen to run on this machine. Returns the
    undo (the session-wide guard is never undone)."""
    def refuse(sock: socket.socket, address: Any) -> Any:
        raise ServiceConnectionRefused(f"BASTION_TEST_NO_SERVICES=1: connection to {address!r} attempted")

    saved = socket.socket.connect, socket.socket.connect_ex
    socket.socket.connect = refuse  # type: ignore[method-assign]
    socket.socket.connect_ex = refuse  # type: ignore[method-assign]

    def undo() -> None:
        socket.socket.connect, socket.socket.connect_ex = saved  # type: ignore[method-assign]

    return undo


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.environ.get("BASTION_TEST_FROM_WHEEL") == "1":
        _imported_from_the_wheel()
    if NO_SERVICES:
        refuse_connections()
        return
    missing = [name for name, (h, p) in {"PostgreSQL": (PG_HOST, PG_PORT), "Redis": (REDIS_HOST, REDIS_PORT)}.items() if not _reachable(h, p)]
    if missing:
        msg = f"{' and '.join(missing)} unreachable on 127.0.0.1 (needed by the suite)"
        if os.environ.get("CI") == "true":
            pytest.exit(f"CI: {msg}", returncode=3)
        pytest.exit(msg + "; start them (see README) and rerun", returncode=3)


# --- database templates: migrate once per session, copy per test -------------------------
_TEMPLATE_DIR = Path(os.environ.get("TMPDIR", "/tmp")) / f"bastion-tests-{os.getpid()}"
_PG_TEMPLATE = f"bastion_tpl_{os.getpid()}"


async def _pg_exec(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user="postgres", database="test")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def sqlite_template() -> Path:
    from store.migrate import upgrade

    _TEMPLATE_DIR.mkdir(parents=True, exist_ok=True)
    path = _TEMPLATE_DIR / "template.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    yield path
    shutil.rmtree(_TEMPLATE_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_template() -> str:
    from store.migrate import upgrade

    asyncio.run(_pg_exec(f'DROP DATABASE IF EXISTS "{_PG_TEMPLATE}"'))
    asyncio.run(_pg_exec(f'CREATE DATABASE "{_PG_TEMPLATE}"'))
    upgrade(f"postgresql+asyncpg://postgres@{PG_HOST}:{PG_PORT}/{_PG_TEMPLATE}")
    yield _PG_TEMPLATE
    asyncio.run(_pg_exec(f'DROP DATABASE IF EXISTS "{_PG_TEMPLATE}"'))


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    target = tmp_path / "bastion.db"
    shutil.copy(sqlite_template, target)
    return f"sqlite+aiosqlite:///{target}"


@pytest.fixture
def pg_url(pg_template: str) -> Any:
    name = f"bastion_t_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_exec(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"'))
    yield f"postgresql+asyncpg://postgres@{PG_HOST}:{PG_PORT}/{name}"
    asyncio.run(_pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def redis_url() -> str:
    import redis

    r = redis.Redis.from_url(REDIS_URL)
    r.flushdb()
    r.close()
    return REDIS_URL


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def settings_factory(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """Settings for the chosen backend; keyword overrides win."""
    from core.settings import load_settings

    if backend == "sqlite":
        db = request.getfixturevalue("sqlite_url")
        redis = None
    else:
        db = request.getfixturevalue("pg_url")
        redis = request.getfixturevalue("redis_url")

    def make(**overrides: Any) -> Any:
        # In-process apps share the event loop with the test's own load (1,000-request bursts
        # on a 2-core CI machine): give Redis calls 2 s before they fail closed. The fault suite
        # checks the production default (250 ms) against real server processes.
        values: dict[str, Any] = {"database_url": db, "redis_url": redis, "data_dir": tmp_path / "data",
                                  "redis_timeout_ms": 2000}
        values.update(overrides)
        return load_settings(env={}, **values)

    return make


@pytest.fixture
def settings(settings_factory: Any) -> Any:
    return settings_factory()


class Client(httpx.AsyncClient):
    """An httpx client bound to the app in this event loop (the test's own), so tests may
    also use the app's engine and Redis directly. ``client.app`` is the Litestar app."""

    app: Any


# Every in-process app's quota windows read this fixed instant instead of the real clock (Redis
# TIME, or time.time in the embedded mode): a run that crosses a UTC hour or day boundary would
# otherwise start fresh windows mid-test and admit more than the test expects. Mid-hour, and in
# the past (an override marker lives until its token's expiry *after* this clock, plus a minute).
QUOTA_NOW = 1_767_227_400.0  # 2026-01-01T00:30:00Z


def pin_quota_clock(app: Any, now: float = QUOTA_NOW) -> None:
    gateway = getattr(app.state, "gateway", None)
    if gateway is not None:
        gateway.quotas.clock = lambda: now


@asynccontextmanager
async def serve_app(app: Any) -> AsyncIterator[Client]:
    async with app.state.lifespan(app):
        pin_quota_clock(app)
        async with Client(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as c:
            c.app = app
            yield c


@pytest.fixture
async def client(settings: Any) -> AsyncIterator[Client]:
    from bastion.app import create_app

    async with serve_app(create_app(settings)) as c:
        yield c


@dataclass
class Org:
    org_id: str
    user_id: str
    owner_key: str
    email: str
    password: str

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.owner_key}


async def bootstrap_org(app: Any, slug: str = "acme", email: str = "owner@acme.com", password: str = "owner-pass-123") -> Org:
    from store.bootstrap import bootstrap

    result = await bootstrap(app.state.runtime, slug, slug.title(), email, password)
    return Org(result.org_id, result.user_id, result.api_key, email, password)


@pytest.fixture
async def org(client: Client) -> Org:
    return await bootstrap_org(client.app)


@pytest.fixture
async def other_org(client: Client) -> Org:
    return await bootstrap_org(client.app, "globex", "owner@globex.com")


async def make_key(client: Client, org: Org, role: str, uapk_ids: list[str] | None = None, name: str | None = None) -> str:
    body: dict[str, Any] = {"name": name or f"{role}-key", "role": role}
    if uapk_ids is not None:
        body["uapk_ids"] = uapk_ids
    r = await client.post(f"/api/v1/orgs/{org.org_id}/api-keys", json=body, headers=org.headers)
    assert r.status_code == 201, r.text
    return r.json()["key"]  # type: ignore[no-any-return]


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    """The spec's error body, with the request id echoed in the header."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "message", "details", "request_id"}, body
    assert body["code"] == code, body
    assert isinstance(body["details"], list)
    assert body["request_id"] == response.headers["x-request-id"]
    return body  # type: ignore[no-any-return]
