"""The gateway service: one decision, step by step (gateway/decision.py lists the steps).

Owned by the app (``app.state.gateway``); the routes stay thin. ``evaluate`` is a dry run;
``execute`` spends quota on allow, consumes the override token that allowed it (its use is
recorded in the database off the response path) and creates an approval on escalate.
``explain`` decides like ``evaluate`` (the quota is read, never spent) and records nothing.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from core.clock import isoformat
from core.tasks import cancel, every
from gateway.approvals import AgentLocks, UsedOverrides, escalate, final_before_approval, on_override_consumed
from gateway.capability import required_capability
from gateway.decision import Decision
from gateway.evaluate import Verifiers, evaluate
from gateway.overrides import check_override
from gateway.quota import spend_or_check
from gateway.recorder import DecisionRecorder, every_outcome
from gateway.schemas import EvaluateResponse, ExecuteResponse, GatewayActionRequest, ReasonOut, TraceOut
from gateway.settle import settle
from gateway.shadow import ShadowRecorder
from gateway.state import GatewayState
from policies.compile import CompiledOrg
from store.quotas import DAY_EXHAUSTED, HOUR_EXHAUSTED, MemoryQuotas, QuotaBackend, RedisQuotas
from store.runtime import Runtime

log = logging.getLogger("bastion.gateway")


def make_quota_backend(runtime: Runtime) -> QuotaBackend:
    if runtime.redis is not None:
        return RedisQuotas(runtime.redis)
    return MemoryQuotas()


class Gateway:
    def __init__(
        self,
        runtime: Runtime,
        *,
        quotas: QuotaBackend | None = None,
        poll_interval: float = 2.0,
        cap_verifier: Any = None,
        audit: Any = None,
        clock: Callable[[], float] = time.time,
    ):
        self.runtime = runtime
        self.audit = audit  # store.audit_writer.AuditSink: one event per decision
        self.state = GatewayState(runtime, poll_interval=poll_interval)
        self.quotas = quotas or make_quota_backend(runtime)
        self.clock = clock  # the time the checks run at (the quota windows follow the backend's)
        self.approval_locks = AgentLocks()  # escalations of one agent, serialized in this process
        self.used_overrides = UsedOverrides()
        runtime.bus.subscribe(self.used_overrides.on_change)
        self.poll_interval = poll_interval
        self.verifiers = Verifiers(
            check_override=functools.partial(check_override, runtime.keys, runtime.settings),
            capabilities=cap_verifier, used_overrides=self.used_overrides,
        )
        self._background: set[asyncio.Task[Any]] = set()
        self._used_poll: asyncio.Task[None] | None = None
        self.shadow = ShadowRecorder(runtime)  # shadow policy diffs, written off the response path

    async def start(self) -> None:
        prepare = getattr(self.quotas, "prepare", None)
        if prepare is not None:
            await prepare()
        await self.state.start()
        await self.used_overrides.refresh(self.runtime)
        if self.poll_interval > 0:
            self._used_poll = every(self.poll_interval, lambda: self.used_overrides.refresh(self.runtime),
                                    name="bastion-used-overrides", log=log, what="used-override catch-up")

    async def stop(self) -> None:
        await cancel(self._used_poll)
        await self.state.stop()
        await self.shadow.close()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def _decide(
        self, org_id: str, req: GatewayActionRequest, *, execute: bool, uapk_ids: tuple[str, ...] | None,
        rec: DecisionRecorder, carried: Callable[[Decision], bool] = every_outcome,
    ) -> Decision:
        """validate -> org snapshot -> evaluate -> quota (one call, carrying the audit event)
        -> settle; the shadow rules are evaluated on the side."""
        capability = required_capability(req)  # 400 before any state is touched
        compiled = await self.state.get(org_id)
        pending = evaluate(req, compiled, self.clock(), self.verifiers, capability=capability,
                           allowed_uapk_ids=uapk_ids)
        quota = await spend_or_check(self.quotas, pending, execute=execute,
                                     audit=rec.quota_audit(pending, carried=carried))
        d = settle(pending, quota)
        if compiled.shadow is not None:  # in memory, no I/O: reuses the live decision's quota result
            self.shadow.observe(self.verifiers, req, compiled, d, execute=execute, uapk_ids=uapk_ids)
        return d

    async def evaluate(
        self, org_id: str, req: GatewayActionRequest, *, uapk_ids: tuple[str, ...] | None,
        actor: str | None = None, request_id: str | None = None,
    ) -> tuple[EvaluateResponse, Decision]:
        interaction_id = str(uuid.uuid4())
        rec = DecisionRecorder(self.audit, org_id=org_id, kind="gateway.evaluate", req=req, actor=actor,
                               request_id=request_id, interaction_id=interaction_id)
        d = await self._decide(org_id, req, execute=False, uapk_ids=uapk_ids, rec=rec)
        await rec.done(d)  # raises (503) when the event cannot be queued: no answer without it
        body = EvaluateResponse(
            interaction_id=interaction_id,
            decision=d.decision,
            reasons=_reasons(d),
            approval_id=None,
            timestamp=isoformat(d.timestamp) or "",
            policy_version=d.policy_version,
            trace=[TraceOut(s.check, s.result, s.detail, s.rule) for s in d.trace],
        )
        return body, d

    async def execute(
        self, org_id: str, req: GatewayActionRequest, *, uapk_ids: tuple[str, ...] | None, key_id: str | None,
        actor: str | None = None, request_id: str | None = None,
    ) -> tuple[ExecuteResponse, Decision]:
        interaction_id = str(uuid.uuid4())
        rec = DecisionRecorder(self.audit, org_id=org_id, kind="gateway.execute", req=req, actor=actor,
                               request_id=request_id, interaction_id=interaction_id)
        # An escalation is audited by the approval step, which may still turn it into a deny.
        d = await self._decide(org_id, req, execute=True, uapk_ids=uapk_ids, rec=rec, carried=final_before_approval)
        approval_id: str | None = None
        if d.decision == "escalate":
            # Joins the identical pending approval, or creates one within the agent's bound
            # (else d becomes a deny); records the audit event before its commit.
            approval_id = await escalate(
                self.runtime, d, req, org_id=org_id, interaction_id=interaction_id, key_id=key_id, record=rec.done,
                locks=self.approval_locks,
            )
        else:
            if d.override_consumed and d.override is not None:
                # Before any await: from here on this process refuses the token and the agent's
                # poll no longer shows it; other processes learn it via the bus and the database.
                self.used_overrides.add(d.override.jti, d.override.expires_at)
            await rec.done(d)  # raises (503) when the event cannot be queued: no answer without it
        if d.decision == "allow" and d.override_consumed and d.override is not None:
            self._record_override_use(org_id, d.override.approval_id, d.override.jti, d.override.expires_at)
        body = ExecuteResponse(
            interaction_id=interaction_id,
            decision=d.decision,
            reasons=_reasons(d),
            approval_id=approval_id,
            timestamp=isoformat(d.timestamp) or "",
            policy_version=d.policy_version,
            executed=False,
            result=None,
        )
        return body, d

    async def explain(self, req: GatewayActionRequest, org: CompiledOrg) -> Decision:
        """The decision ``req`` would get now against ``org`` (a live or candidate snapshot), as
        ``evaluate`` makes it: the quota is read, nothing is spent or recorded."""
        pending = evaluate(req, org, self.clock(), self.verifiers)
        return settle(pending, await spend_or_check(self.quotas, pending, execute=False))

    def _record_override_use(self, org_id: str, approval_id: str, jti: str, expires_at: float) -> None:
        task = asyncio.create_task(on_override_consumed(self.runtime, org_id, approval_id, jti, expires_at))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Wait for background work (tests)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)


def _reasons(d: Decision) -> list[ReasonOut]:
    return [ReasonOut(r.code, r.message, r.details) for r in d.reasons]


def ratelimit_headers(d: Decision) -> dict[str, str]:
    """IETF draft-ietf-httpapi-ratelimit-headers: the agent's two quota policies, and the
    window that binds first (fewest remaining; the hour on a tie)."""
    limits = d.limits
    if limits is None:
        return {}
    hour, day = limits
    headers = {"RateLimit-Policy": f'"hour";q={hour};w=3600, "day";q={day};w=86400'}
    q = d.quota
    if q is not None:
        hour_r, day_r = q.hour_remaining, q.day_remaining
        if q.status == DAY_EXHAUSTED:
            name, remaining, reset = "day", 0, q.day_reset
        elif q.status == HOUR_EXHAUSTED:
            name, remaining, reset = "hour", 0, q.hour_reset
        elif day_r < hour_r:
            name, remaining, reset = "day", day_r, q.day_reset
        else:
            name, remaining, reset = "hour", hour_r, q.hour_reset
        headers["RateLimit"] = f'"{name}";r={remaining};t={q.retry_after(reset)}'
    return headers
