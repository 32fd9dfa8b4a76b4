"""One management change to an organization, written one way: transaction, version bump,
audit event, announcement.

    async with unit_of_work(runtime, org_id, audit=hook) as uow:
        row = await repo.change_something(uow.session, ...)
        await uow.record("thing.changed", {"id": row.id})          # inside the transaction
        uow.announce(ManifestChanged(org_id=org_id, version=uow.version, ...))
    # committed here; the announcement went out just after the commit

* The transaction opens first and ``org_state.version`` is bumped first: on PostgreSQL that
  UPDATE locks the org's row, so concurrent changes of one org take turns (their version
  numbers never collide) and every unit of work takes its locks in the same order.
* ``record`` calls the ``audit`` hook inside the transaction, before the commit: a change
  whose audit event cannot be written raises there and is rolled back, never made unaudited.
  The hook is a parameter (``hook(kind, details, session, **fields)``) because the audit
  trail lives above ``store``. Given a hook, a unit of work that records nothing refuses to
  commit (a forgotten audit call is a bug, not a silent gap).
* ``announce`` queues a typed bus message (``store.bus_messages``); the queue is published
  only after a successful commit, so no process hears of a change that did not happen.
  ``bump_version=False`` is for changes that invalidate nothing a gateway compiles (a
  capability token revoked): no version moves, so no process reloads anything for them.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession

from store.bus_messages import Change
from store.changes import announce, bump_org_version

if TYPE_CHECKING:
    from store.runtime import Runtime

# hook(kind, details, session, **fields): writes one audit event inside the session's transaction.
Audit = Callable[..., Awaitable[None]]


class UnitOfWork:
    def __init__(self, session: AsyncSession, org_id: str, version: int | None, audit: Audit | None):
        self.session = session
        self.org_id = org_id
        self._version = version
        self._audit = audit
        self.recorded = 0
        self.messages: list[Change] = []

    @property
    def version(self) -> int:
        """The org's ``org_state.version`` after this change."""
        if self._version is None:
            raise RuntimeError("this unit of work did not bump the org's version (bump_version=False)")
        return self._version

    async def record(self, kind: str, details: dict[str, Any] | None = None, **fields: Any) -> None:
        """The change's audit event, inside the transaction (a failure rolls the change back)."""
        if self._audit is not None:
            await self._audit(kind, details, self.session, **fields)
        self.recorded += 1

    def announce(self, message: Change) -> None:
        """Publish ``message`` on the change bus after the commit (never if it rolls back)."""
        self.messages.append(message)


@asynccontextmanager
async def unit_of_work(
    runtime: Runtime, org_id: str, *, audit: Audit | None = None, bump_version: bool = True
) -> AsyncIterator[UnitOfWork]:
    async with runtime.sessions() as session:
        async with session.begin():
            version = await bump_org_version(session, org_id) if bump_version else None
            uow = UnitOfWork(session, org_id, version, audit)
            yield uow
            if audit is not None and uow.recorded == 0:
                raise RuntimeError(f"a change to org {org_id} recorded no audit event; rolled back")
    for message in uow.messages:
        await announce(runtime.bus, message)
