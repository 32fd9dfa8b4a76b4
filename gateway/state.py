"""Per-organization compiled policy snapshots, in memory, kept fresh.

* Lazy: an org is loaded from SQL and compiled (``store.compiled_org.load_compiled_org``) on
  its first decision; after that a decision reads one dict entry (no SQL).
* Changes: a change-bus message that invalidates a compiled org (``ManifestChanged``,
  ``PolicyChanged``: ``invalidates_org`` in ``store.bus_messages``) and names a loaded org
  rebuilds it, unless the snapshot already has its version; every other message (a capability
  token revoked, an override spent, a key revoked) loads nothing (a key revocation moves the
  org's version, so the catch-up poll below reloads once for it). In-process the bus delivers
  synchronously inside ``announce()``, so a transition changes decisions before ``announce``
  returns; other processes get it through Redis pub/sub within milliseconds.
* Catch-up: a background task compares the loaded orgs' ``org_state`` versions every
  ``poll_interval`` seconds (2 s) and rebuilds the ones that moved (a missed message).
* Atomic swap: a rebuild compiles a whole new ``CompiledOrg`` and then replaces the dict
  entry; a request sees the old or the new snapshot, never a mix. An older load never
  replaces a newer one. If a rebuild fails (database down), the org is evicted so the next
  decision reloads it (and answers 503 if it cannot): never decide on a snapshot known stale.
"""
from __future__ import annotations

import asyncio
import logging

from core.settings import Settings
from core.tasks import cancel
from policies.compile import CompiledOrg
from store import gateway_state
from store.bus_messages import Change
from store.compiled_org import load_compiled_org
from store.runtime import Runtime

log = logging.getLogger("bastion.gateway.state")


class GatewayState:
    def __init__(self, runtime: Runtime, *, poll_interval: float = 2.0):
        self.runtime = runtime
        self.settings: Settings = runtime.settings
        self.poll_interval = poll_interval
        self._orgs: dict[str, CompiledOrg] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._requested: dict[str, int] = {}
        self._completed: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self.loads = 0  # how many SQL loads ran (tests and metrics)

    # --- reads -------------------------------------------------------------------------
    def peek(self, org_id: str) -> CompiledOrg | None:
        return self._orgs.get(org_id)

    async def get(self, org_id: str) -> CompiledOrg:
        compiled = self._orgs.get(org_id)
        if compiled is not None:
            return compiled
        return await self.refresh(org_id)

    # --- rebuilds ----------------------------------------------------------------------
    async def refresh(self, org_id: str) -> CompiledOrg:
        """Reload and recompile ``org_id``. Concurrent callers share one load: a caller whose
        request came in before a load started waits for it instead of loading again."""
        ticket = self._requested.get(org_id, 0) + 1
        self._requested[org_id] = ticket
        lock = self._locks.setdefault(org_id, asyncio.Lock())
        async with lock:
            current = self._orgs.get(org_id)
            if current is not None and self._completed.get(org_id, 0) >= ticket:
                return current
            started = self._requested[org_id]
            try:
                compiled = await self._load(org_id)
            except Exception:
                self._orgs.pop(org_id, None)
                raise
            current = self._orgs.get(org_id)
            if current is None or compiled.version >= current.version:
                self._orgs[org_id] = compiled  # the atomic swap
            self._completed[org_id] = started
            return self._orgs[org_id]

    async def _load(self, org_id: str) -> CompiledOrg:
        self.loads += 1
        return await load_compiled_org(
            self.runtime.sessions, org_id,
            default_per_hour=self.settings.default_max_actions_per_hour,
            default_per_day=self.settings.default_max_actions_per_day,
        )

    async def on_change(self, message: Change) -> None:
        if not message.invalidates_org:
            return  # a token revoked, an override spent, a key revoked: nothing compiled here changed
        org_id = message.org_id
        lock = self._locks.get(org_id)
        if org_id not in self._orgs and not (lock is not None and lock.locked()):
            return  # not loaded here (nor loading): the first decision loads it fresh
        version = getattr(message, "version", None)
        current = self._orgs.get(org_id)
        if isinstance(version, int) and current is not None and current.version >= version:
            return
        try:
            await self.refresh(org_id)
        except Exception:
            log.warning("could not rebuild org %s after a change; evicted", org_id, exc_info=True)

    async def poll_once(self) -> list[str]:
        """Rebuild every loaded org whose org_state version moved. Returns their ids."""
        if not self._orgs:
            return []
        async with self.runtime.sessions() as session:
            versions = await gateway_state.org_versions_for(session, list(self._orgs))
        stale = [o for o, v in versions.items() if o in self._orgs and self._orgs[o].version != v]
        for org_id in stale:
            try:
                await self.refresh(org_id)
            except Exception:
                log.warning("could not rebuild org %s; evicted", org_id, exc_info=True)
        return stale

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("org_state poll failed", exc_info=True)

    # --- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        self.runtime.bus.subscribe(self.on_change)
        if self._task is None and self.poll_interval > 0:
            self._task = asyncio.create_task(self._poll_forever(), name="bastion-gateway-poll")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None
