"""Background tasks of a process: periodic catch-ups and their orderly cancellation."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any


async def cancel(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` and wait for it to end, swallowing its cancellation or failure."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):
        pass


def every(seconds: float, step: Callable[[], Awaitable[Any]], *, name: str, log: logging.Logger, what: str) -> asyncio.Task[None]:
    """Run ``step`` every ``seconds`` until cancelled. A failing step (the database or Redis
    briefly down) is logged and retried at the next tick; it never ends the loop."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("%s failed: %s", what, type(exc).__name__)

    return asyncio.create_task(loop(), name=name)
