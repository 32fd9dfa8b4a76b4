"""The Sink interface (audit/sink.py) and its registered implementations."""
from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from audit.event import AuditEvent, build_event
from audit.sink import QueueSink, RedisStreamSink, Sink, registered_sinks, sink_class
from audit.stream import FIELD, decode
from core.clock import utcnow
from core.errors import ServiceUnavailable
from store.audit import TransactionSink, verify_org
from store.models import AuditEvent as AuditRow
from store.models import Organization
from store.runtime import Runtime


def test_the_three_sinks_are_registered_and_are_sinks() -> None:
    assert {"redis", "queue", "transaction"} <= set(registered_sinks())
    assert sink_class("redis") is RedisStreamSink and sink_class("queue") is QueueSink
    assert sink_class("transaction") is TransactionSink
    assert isinstance(QueueSink(), Sink)
    with pytest.raises(KeyError, match="registered: "):
        sink_class("kafka")


async def test_the_queue_sink_refuses_when_full() -> None:
    sink = QueueSink(max_queue=1)
    await sink.record(build_event(org_id="o", kind="test.event"))
    with pytest.raises(ServiceUnavailable):
        await sink.record(build_event(org_id="o", kind="test.event"))
    assert isinstance(sink.queue.get_nowait(), AuditEvent)


async def test_the_redis_sink_xadds_the_encoded_event_or_refuses() -> None:
    sent: list[tuple[str, Any]] = []

    class Client:
        async def xadd(self, name: str, fields: Any) -> bytes:
            sent.append((name, fields))
            return b"1-0"

    class Down:
        async def xadd(self, name: str, fields: Any) -> bytes:
            raise ConnectionError("refused")

    event = build_event(org_id="o", kind="test.event", details={"n": 1})
    await RedisStreamSink(Client(), "s").record(event)
    ((name, fields),) = sent
    assert name == "s" and decode(fields[FIELD]) == event.to_dict()
    with pytest.raises(ServiceUnavailable, match="ConnectionError"):
        await RedisStreamSink(Down()).record(event)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_the_transaction_sink_commits_and_rolls_back_with_the_change(backend: str, settings_factory: Any) -> None:
    """The event is part of the caller's transaction: a change rolled back takes its event
    with it, a committed one is on the chain (which verifies)."""
    runtime = Runtime.build(settings_factory())
    try:
        org = Organization(slug="tx-sink", name="Tx Sink", created_at=utcnow())
        with pytest.raises(RuntimeError):
            async with runtime.sessions() as session, session.begin():
                session.add(org)
                await session.flush()
                sink = TransactionSink(session, keys=runtime.keys, issuer=runtime.settings.issuer)
                await sink.record(build_event(org_id=org.id, kind="org.created", actor="cli:test"))
                raise RuntimeError("the change failed after its event was recorded")
        async with runtime.sessions() as session:
            assert (await session.execute(select(AuditRow).where(AuditRow.org_id == org.id))).first() is None
        async with runtime.sessions() as session, session.begin():
            sink = TransactionSink(session, keys=runtime.keys, issuer=runtime.settings.issuer)
            await sink.record(build_event(org_id=org.id, kind="org.created", actor="cli:test"))
            assert sink.appended == 1
        async with runtime.sessions() as session:
            rows = (await session.execute(select(AuditRow).where(AuditRow.org_id == org.id))).scalars().all()
        assert [(r.seq, r.kind) for r in rows] == [(1, "org.created")]
        assert (await verify_org(runtime.sessions, org.id, runtime.keys)).valid
    finally:
        await runtime.engine.dispose()
        if runtime.redis is not None:
            await runtime.redis.aclose()


async def test_a_change_context_records_through_a_unit_of_work(settings_factory: Any) -> None:
    """``ChangeContext.hook`` is the audit hook of store.unit_of_work: the event is handed over
    inside the change's transaction; a refusal rolls the change back."""
    from audit.changes import ChangeContext
    from store.unit_of_work import unit_of_work

    runtime = Runtime.build(settings_factory())
    try:
        async with runtime.sessions() as session, session.begin():
            org = Organization(slug="uow-ctx", name="Uow", created_at=utcnow())
            session.add(org)
        queue = QueueSink()
        ctx = ChangeContext(queue, actor="user:a@b.c", org_id=org.id, request_id="rq-1")
        async with unit_of_work(runtime, org.id, audit=ctx.hook) as uow:
            await uow.record("policy.rule_added", {"rule": "r1"})
        event = queue.queue.get_nowait()
        assert (event.kind, event.org_id, event.actor, event.request_id, event.details) == (
            "policy.rule_added", org.id, "user:a@b.c", "rq-1", {"rule": "r1"})

        class Refusing:
            async def record(self, event: AuditEvent) -> None:
                raise ServiceUnavailable("down")

        refusing = ChangeContext(Refusing(), actor="user:a@b.c", org_id=org.id)
        with pytest.raises(ServiceUnavailable):
            async with unit_of_work(runtime, org.id, audit=refusing.hook) as uow:
                uow.session.add(Organization(slug="uow-never", name="Never", created_at=utcnow()))
                await uow.record("org.created", {"slug": "uow-never"})
        async with runtime.sessions() as session:
            assert (await session.execute(select(Organization).where(Organization.slug == "uow-never"))).first() is None
    finally:
        await runtime.engine.dispose()
        if runtime.redis is not None:
            await runtime.redis.aclose()
