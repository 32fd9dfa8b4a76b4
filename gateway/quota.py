"""Step 2 of a decision: the quota, one call to the backend (one Redis round trip).

An execute that the checks allow spends one unit of the hourly and the daily window (and
marks its override token used, single use); everything else only reads, an escalation too
(an exhausted budget denies it: deny beats escalate). A decision that a check denied does not
reach the quota. ``audit`` rides along (store/quotas.py ``QuotaAudit``).
"""
from __future__ import annotations

from gateway.decision import Pending
from store.quotas import QuotaAudit, QuotaBackend, QuotaResult


async def spend_or_check(
    quotas: QuotaBackend, pending: Pending, *, execute: bool, audit: QuotaAudit | None = None
) -> QuotaResult | None:
    """The quota result for :func:`gateway.settle.settle`; None when the checks denied."""
    if not pending.reaches_quota or pending.agent is None:
        return None
    hour, day = pending.agent.max_actions_per_hour, pending.agent.max_actions_per_day
    call = quotas.spend if pending.spends(execute) else quotas.check
    return await call(pending.org_id, pending.uapk_id, hour, day, pending.override_mark, audit=audit)
