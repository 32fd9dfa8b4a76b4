"""Time limits for tests that wait for something to happen.

``make test`` runs on busy 2-core CI machines, so it never asserts how fast something is: a wait
there is bounded only so that a hang (a property that does not hold) fails instead of running
forever, with a limit far above any documented figure. The documented figures themselves (1 s
propagation, 2 s catch-up, 5 s recovery, 300 ms fail-fast) are measured by ``make bench``
(benchmarks/) and asserted by ``make soak`` (``BASTION_SOAK=1``, meant for a quiet machine).
"""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

SOAK = os.environ.get("BASTION_SOAK", "").strip().lower() in {"1", "true", "yes", "on"}
# Long enough for a loaded CI machine; short enough that a hang fails in reasonable time.
GENEROUS = 30.0


def limit(figure: float) -> float:
    """How long a test waits for something documented to take ``figure`` seconds: the figure
    itself under ``make soak``, a generous bound under ``make test``."""
    return figure if SOAK else max(GENEROUS, figure)


async def eventually(predicate: Callable[[], Awaitable[Any]], figure: float, interval: float = 0.02) -> float:
    """Poll ``predicate`` until it returns a truthy value; the seconds it took. Fails after
    ``limit(figure)`` (what was waited for never happened, or too slowly under soak)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    bound = limit(figure)
    while True:
        if await predicate():
            return loop.time() - start
        if loop.time() - start > bound:
            raise AssertionError(f"not within {bound:g} s (documented: {figure:g} s)")
        await asyncio.sleep(interval)


def eventually_sync(predicate: Callable[[], Any], figure: float, interval: float = 0.02) -> float:
    """:func:`eventually` for synchronous tests."""
    start = time.monotonic()
    bound = limit(figure)
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > bound:
            raise AssertionError(f"not within {bound:g} s (documented: {figure:g} s)")
        time.sleep(interval)
