"""Shadow policy: decide with the live rules, also evaluate a candidate set, record differences.

The shadow decision evaluates the org's shadow snapshot (``CompiledOrg.shadow``: same
manifests, the shadow rules) entirely in memory (gateway/evaluate.py) at the live decision's
time, and settles it with the live decision's quota result (no second Redis round trip; when
the live decision stopped before the quota check the shadow run assumes the quota passes); an
override token the live run accepted is reused. Nothing is spent, no fake quota backend.

Differences go into a bounded in-memory buffer (oldest dropped when full, counted in
``dropped``) that a background task writes to SQL (``policy_shadow_diffs``) off the response
path. A diff keeps the action's ``params`` only with ``BASTION_AUDIT_INCLUDE_PARAMS``, like the
audit trail; otherwise their ``params_hash`` (the same digest as the audit event's).
"""
from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any

import msgspec

from audit.event import params_digest
from core.clock import utcnow
from core.tasks import cancel
from gateway.decision import Decision
from gateway.evaluate import Verifiers, evaluate
from gateway.settle import assumed, settle
from policies.compile import CompiledOrg
from store import policy_rules

log = logging.getLogger("bastion.gateway.shadow")


def shadow_decide(verifiers: Verifiers, req: Any, shadow: CompiledOrg, live: Decision, *,
                  uapk_ids: tuple[str, ...] | None) -> Decision:
    """The decision the shadow rules would have made, at the live decision's time, settled with
    the live decision's quota result (or, when the live decision read none, a passing one)."""
    if live.override is not None:
        accepted = live.override

        def check_override(*args: Any, **kwargs: Any) -> Any:
            return accepted  # verified once, by the live decision
        verifiers = Verifiers(check_override, verifiers.capabilities)
    else:
        verifiers = Verifiers(verifiers.check_override, verifiers.capabilities)
    pending = evaluate(req, shadow, live.timestamp.timestamp(), verifiers, capability=live.capability,
                       allowed_uapk_ids=uapk_ids)
    return settle(pending, live.quota if live.quota is not None else assumed(pending))


def _codes(d: Decision) -> list[str]:
    return [r.code for r in d.reasons]


class ShadowRecorder:
    def __init__(self, runtime: Any, *, capacity: int = 10_000, interval: float = 0.2):
        self.runtime = runtime
        self.buffer: collections.deque[dict[str, Any]] = collections.deque(maxlen=capacity)
        self.interval = interval
        self.dropped = 0
        self.recorded = 0
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.include_params = bool(getattr(getattr(runtime, "settings", None), "audit_include_params", False))

    def _action(self, req: Any) -> dict[str, Any]:
        """The action as the diff stores it: params replaced by their digest unless params are
        recorded (the same setting as the audit trail: they may hold personal data)."""
        action: dict[str, Any] = msgspec.to_builtins(req.action)
        if not self.include_params:
            action["params_hash"] = params_digest(action.pop("params", None))
        return action

    def observe(self, verifiers: Verifiers, req: Any, org: CompiledOrg, live: Decision, *,
                execute: bool, uapk_ids: tuple[str, ...] | None) -> Decision | None:
        """Evaluate ``org.shadow`` for this request; buffer a diff. Never raises."""
        shadow = org.shadow
        if shadow is None:
            return None
        try:
            sd = shadow_decide(verifiers, req, shadow, live, uapk_ids=uapk_ids)
        except Exception:  # the shadow must never break the live path
            log.warning("shadow evaluation failed", exc_info=True)
            return None
        if (sd.decision, _codes(sd)) != (live.decision, _codes(live)):
            if len(self.buffer) == self.buffer.maxlen:
                self.dropped += 1
            self.buffer.append({
                "org_id": org.org_id,
                "shadow_version": shadow.rules.version,
                "mode": "execute" if execute else "evaluate",
                "uapk_id": req.uapk_id,
                "agent_id": req.agent_id,
                "capability": live.capability,
                "live_decision": live.decision,
                "shadow_decision": sd.decision,
                "live_reasons": [r.as_dict() for r in live.reasons],
                "shadow_reasons": [r.as_dict() for r in sd.reasons],
                "live_policy_version": live.policy_version,
                "action": self._action(req),
                "created_at": utcnow(),
            })
            self._ensure_task()
        return sd

    def _ensure_task(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="bastion-shadow-diffs")

    async def _run(self) -> None:
        while self.buffer:
            await asyncio.sleep(self.interval)
            await self.flush()

    async def flush(self) -> int:
        """Write what is buffered now (also called before listing diffs)."""
        async with self._lock:
            rows = []
            while self.buffer:
                rows.append(self.buffer.popleft())
            if not rows:
                return 0
            try:
                async with self.runtime.sessions() as session:
                    await policy_rules.insert_diffs(session, rows)
            except Exception:
                log.warning("could not record %d shadow diffs", len(rows), exc_info=True)
                return 0
            self.recorded += len(rows)
            return len(rows)

    async def close(self) -> None:
        await cancel(self._task)
        self._task = None
        await self.flush()
