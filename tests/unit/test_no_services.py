"""The tests in tests/unit run with no PostgreSQL and no Redis: under BASTION_TEST_NO_SERVICES=1
the session does not look for them, and any connection attempt fails the test that makes it."""
from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PG_HOST, PG_PORT, REDIS_HOST, REDIS_PORT, ServiceConnectionRefused, refuse_connections

UNIT = Path(__file__).parent
SELF = "tests/unit/test_no_services.py::test_unit_tests_pass_with_every_connection_refused"


@pytest.fixture
def guard() -> Iterator[None]:
    undo = refuse_connections()
    try:
        yield
    finally:
        undo()


@pytest.mark.parametrize("address", [(PG_HOST, PG_PORT), (REDIS_HOST, REDIS_PORT)])
def test_the_guard_refuses_connections(guard: None, address: tuple[str, int]) -> None:
    with pytest.raises(ServiceConnectionRefused):
        socket.create_connection(address, timeout=1)


async def test_the_guard_refuses_asyncio_connections(guard: None) -> None:
    # redis.asyncio and asyncpg connect through the event loop, which calls socket.connect.
    with pytest.raises(ServiceConnectionRefused):
        await asyncio.open_connection(REDIS_HOST, REDIS_PORT)


def test_unit_tests_pass_with_every_connection_refused() -> None:
    """Runs tests/unit again in a child pytest with the guard on for the whole session (so
    `make test`, which has the services, still proves the unit tests do not need them)."""
    env = {**os.environ, "BASTION_TEST_NO_SERVICES": "1"}
    rootdir = UNIT.parent.parent
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(rootdir),
         "--deselect", SELF, str(UNIT)],
        cwd=rootdir, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    summary = proc.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    # the whole directory ran (more than the guard's own tests), nothing skipped
    assert passed is not None and int(passed.group(1)) > 3 and "skipped" not in summary, summary
