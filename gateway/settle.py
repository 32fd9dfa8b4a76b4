"""Step 3 of a decision: ``settle(pending, quota result) -> Decision``, pure.

The only place where a quota status becomes a reason: the response, the RateLimit headers,
the approval step and the audit event (gateway/recorder.py) all read the settled decision.

* a check denied (``pending.denied``): that denial; the quota was not read;
* ``OVERRIDE_USED``: deny ``override_token_already_used`` (another execute spent the token first);
* ``DAY_EXHAUSTED`` / ``HOUR_EXHAUSTED``: deny ``budget_exceeded`` / ``hourly_budget_exceeded``
  with ``{limit, remaining, reset_at, retry_after, window}``, counted from the quota backend's
  clock (Redis TIME: every process agrees on the windows);
* otherwise the checks' outcome: ``escalate`` (``requires_human_approval``), or allow
  (``override_token_accepted`` when a human's token allowed it, else ``all_checks_passed``).
"""
from __future__ import annotations

from datetime import UTC, datetime

from gateway.decision import (
    ALL_CHECKS_PASSED,
    BUDGET_EXCEEDED,
    HOURLY_BUDGET_EXCEEDED,
    OVERRIDE_TOKEN_ACCEPTED,
    OVERRIDE_TOKEN_ALREADY_USED,
    Decision,
    Pending,
    Reason,
    Step,
)
from store.quotas import DAY_EXHAUSTED, HOUR_EXHAUSTED, OK, OVERRIDE_USED, QuotaResult

# The statuses whose outcome settle() can give before the quota call, so that their audit
# events ride along with it for the quota script to hand over in the same step
# (gateway/recorder.py): all of them. A window denial's reset and retry_after are counted from
# the backend's clock: the recorder settles it with the gateway's clock and the script puts in
# the retry_after of its own clock, carrying it only when its window is the one assumed.
KNOWN_BEFORE_THE_CALL = (OK, HOUR_EXHAUSTED, DAY_EXHAUSTED, OVERRIDE_USED)


def settle(pending: Pending, quota: QuotaResult | None) -> Decision:
    """``quota``: what gateway/quota.py returned (None when the checks denied, or for a dry
    run that reads no quota: the quota step is then ``skip``)."""
    p = pending
    d = Decision("deny", [], p.trace.copy(), p.capability, p.policy_version, p.timestamp, p.agent, quota, p.override,
                 False, p.policy)
    if p.denied is not None or p.agent is None:
        d.reasons = [p.denied] if p.denied is not None else []
        return d
    cap, hour, day = p.capability, p.agent.max_actions_per_hour, p.agent.max_actions_per_day
    q = quota
    if q is None:
        d.trace.append(Step("quota", "skip", "not checked (a dry run without quotas)"))
    elif q.status == OVERRIDE_USED:
        return _deny(d, Reason(OVERRIDE_TOKEN_ALREADY_USED, "The override token was already used.",
                               {"capability": cap}), "override:single-use")
    elif q.status == DAY_EXHAUSTED:
        reset = q.day_reset
        return _deny(d, Reason(
            BUDGET_EXCEEDED, f"Daily budget of {day} actions exhausted.",
            {"limit": day, "remaining": 0, "reset_at": _rfc3339(reset), "retry_after": q.retry_after(reset),
             "window": "day"}), f"max_actions_per_day:{day}")
    elif q.status == HOUR_EXHAUSTED:
        reset = q.hour_reset
        return _deny(d, Reason(
            HOURLY_BUDGET_EXCEEDED, f"Hourly budget of {hour} actions exhausted.",
            {"limit": hour, "remaining": 0, "reset_at": _rfc3339(reset), "retry_after": q.retry_after(reset),
             "window": "hour"}), f"max_actions_per_hour:{hour}")
    else:
        d.trace.append(Step(
            "quota", "pass",
            f"hour {q.hour_used}/{hour}, day {q.day_used}/{day}" + (" (spent)" if q.spent else " (not spent)"),
            f"max_actions_per_hour:{hour},max_actions_per_day:{day}"))

    if p.escalation is not None:
        d.decision, d.reasons = "escalate", [p.escalation]
    elif p.override is not None:
        d.decision = "allow"
        d.override_consumed = q is not None and q.spent
        d.reasons = [Reason(OVERRIDE_TOKEN_ACCEPTED, "Allowed by a human's override token.",
                            {"approval_id": p.override.approval_id})]
    else:
        d.decision, d.reasons = "allow", [Reason(ALL_CHECKS_PASSED, "All checks passed.", {})]
    return d


def assumed(pending: Pending, status: int = OK, *, spent: bool = False) -> QuotaResult | None:
    """A quota result without a backend: ``status`` at the pending decision's time, nothing
    used. For outcomes decided before the quota call (the recorder) and dry runs that assume
    the quota passes (policy tests; shadow mode when the live decision read none)."""
    if not pending.reaches_quota or pending.agent is None:
        return None
    agent = pending.agent
    return QuotaResult(status, 0, 0, agent.max_actions_per_hour, agent.max_actions_per_day, pending.now,
                       spent and status == OK)


def _deny(d: Decision, reason: Reason, rule: str) -> Decision:
    d.decision, d.reasons = "deny", [reason]
    d.trace.append(Step("quota", "fail", reason.message, rule))
    return d


def _rfc3339(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")
