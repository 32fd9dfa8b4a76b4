"""Fixtures of the fault suite: a private Redis per test, Bastion subprocesses on PostgreSQL."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.procs import BastionServer, RedisServer, TcpProxy


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as r:
        yield r


@pytest.fixture
def bastion_factory(tmp_path: Path, pg_url: str) -> Iterator[Callable[..., BastionServer]]:
    """``make(redis_url=..., **env)`` -> a started ``bastion serve`` on a fresh PostgreSQL
    database (this test's copy of the migrated template). Stopped at teardown."""
    made: list[BastionServer] = []

    def make(redis_url: str | None, *, database_url: str | None = None, name: str = "bastion",
             start: bool = True, **env: str) -> BastionServer:
        s = BastionServer(tmp_path / "srv", database_url=database_url or pg_url, redis_url=redis_url, name=name, env=env)
        made.append(s)
        return s.start() if start else s

    yield make
    for s in made:
        s.close()


@pytest.fixture
def pg_proxy() -> Iterator[TcpProxy]:
    """127.0.0.1:<port> -> PostgreSQL; ``cut()`` makes the database unreachable."""
    from tests.conftest import PG_PORT

    with TcpProxy(PG_PORT) as p:
        yield p





@pytest.fixture(scope="module")
def module_pg_url(pg_template: str) -> Iterator[str]:
    """A database of this module's own (a copy of the migrated template)."""
    import asyncio
    import uuid

    from tests.conftest import PG_HOST, PG_PORT, _pg_exec

    name = f"bastion_f_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_exec(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"'))
    yield f"postgresql+asyncpg://postgres@{PG_HOST}:{PG_PORT}/{name}"
    asyncio.run(_pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, module_pg_url: str) -> Iterator[tuple[BastionServer, BastionServer, RedisServer]]:
    """Two ``bastion serve`` processes sharing one PostgreSQL database, one (private) Redis
    and one data dir (signing keys, pepper): replicas behind a load balancer."""
    from tests.faults.procs import inherit

    work = tmp_path_factory.mktemp("replicas")
    with RedisServer(work / "redis") as redis:
        a = BastionServer(work / "a", database_url=module_pg_url, redis_url=redis.url(), name="a")
        b = inherit(a, work / "b", "b")
        try:
            a.start()
            b.org_id, b.owner_key = a.org_id, a.owner_key
            b.start()
            yield a, b, redis
        finally:
            b.close()
            a.close()


@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory, module_pg_url: str) -> Iterator[BastionServer]:
    """One ``bastion serve`` (PostgreSQL + a private Redis) for a whole module."""
    work = tmp_path_factory.mktemp("server")
    with RedisServer(work / "redis") as redis:
        server = BastionServer(work / "srv", database_url=module_pg_url, redis_url=redis.url())
        try:
            server.start()
            yield server
        finally:
            server.close()
