"""Fixtures of the fault suite: a private Redis per test, Bastion subprocesses on PostgreSQL."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

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


def proxied(url: str, port: int) -> str:
    return url.replace("127.0.0.1:5432", f"127.0.0.1:{port}")

