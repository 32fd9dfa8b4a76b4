"""Audit test helpers: a Runtime with a sink, events, direct table access."""
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import select

from audit.event import AuditEvent, build_event
from store.audit_writer import AuditSink
from store.models import AuditCheckpoint
from store.models import AuditEvent as AuditRow
from store.runtime import Runtime


def event(org_id: str, n: int = 0, **kw: Any) -> AuditEvent:
    values: dict[str, Any] = dict(
        org_id=org_id, kind="test.event", actor="api_key:k1", uapk_id="bot", agent_id="a-1",
        capability="crm:read", decision="allow", reasons=[{"code": "all_checks_passed"}],
        policy_version="v1", request_id=f"req-{n}", interaction_id=f"int-{n}", params={"n": n}, has_params=True,
    )
    values.update(kw)
    return build_event(**values)


@asynccontextmanager
async def running_sink(settings: Any, **kw: Any) -> AsyncIterator[tuple[Runtime, AuditSink]]:
    runtime = Runtime.build(settings)
    kw.setdefault("tick", 0.05)
    kw.setdefault("block_ms", 50)
    sink = AuditSink(runtime, **kw)
    await sink.start()
    try:
        yield runtime, sink
    finally:
        await sink.stop()
        if runtime.redis is not None:
            await runtime.redis.aclose()
        await runtime.engine.dispose()


async def rows(runtime: Runtime, org_id: str) -> list[AuditRow]:
    async with runtime.sessions() as s:
        return list((await s.execute(select(AuditRow).where(AuditRow.org_id == org_id).order_by(AuditRow.seq))).scalars())


async def checkpoints(runtime: Runtime, org_id: str) -> list[AuditCheckpoint]:
    async with runtime.sessions() as s:
        return list((await s.execute(
            select(AuditCheckpoint).where(AuditCheckpoint.org_id == org_id).order_by(AuditCheckpoint.seq))).scalars())
