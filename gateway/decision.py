"""What a gateway decision is made of: reasons, trace steps, the pending outcome that
``gateway.evaluate.evaluate`` computes without I/O, and the ``Decision`` that
``gateway.settle.settle`` makes of it once the quota step has answered.

The decision path, one file per step::

    gateway/capability.py  required_capability(request)            400 before any state is read
    gateway/evaluate.py    evaluate(request, org, now, verifiers)  -> Pending   (pure)
    gateway/quota.py       spend_or_check(quotas, pending, ...)    -> QuotaResult (one Redis call)
    gateway/settle.py      settle(pending, quota result)           -> Decision  (pure)
    gateway/recorder.py    the decision's audit event, built from settled decisions
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from policies.compile import AgentPolicy
from policies.rules import Verdict
from store.quotas import OverrideMark, QuotaResult

Outcome = Literal["allow", "deny", "escalate"]
StepResult = Literal["pass", "fail", "escalate", "skip"]

# Reason codes.
MANIFEST_NOT_FOUND = "manifest_not_found"
MANIFEST_NOT_ACTIVE = "manifest_not_active"
CAPABILITY_NOT_GRANTED = "capability_not_granted"
REQUIRES_HUMAN_APPROVAL = "requires_human_approval"
HOURLY_BUDGET_EXCEEDED = "hourly_budget_exceeded"
BUDGET_EXCEEDED = "budget_exceeded"
OVERRIDE_TOKEN_ALREADY_USED = "override_token_already_used"
ALL_CHECKS_PASSED = "all_checks_passed"
OVERRIDE_TOKEN_ACCEPTED = "override_token_accepted"
CAPABILITY_TOKEN_REQUIRED = "capability_token_required"
POLICY_DENIED = "policy_denied"  # an org policy rule (effect deny) forbids it
POLICY_CONDITIONS_NOT_MET = "policy_conditions_not_met"  # allow rules cover it, none's conditions hold

# The checks, in the order they run (deny beats escalate beats allow); once one denies, the
# later ones are skipped (trace result ``skip``).
CHECKS = ("manifest", "capability_token", "capability", "human_approval", "quota")


@dataclass(frozen=True, slots=True)
class Reason:
    code: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


@dataclass(frozen=True, slots=True)
class Step:
    check: str
    result: StepResult
    detail: str = ""
    rule: str | None = None


@dataclass(slots=True)
class Pending:
    """Every check but the quota, done: what :func:`gateway.settle.settle` needs. Filled in by
    :func:`gateway.evaluate.evaluate` and not changed once it returns (not frozen: a frozen
    dataclass costs a microsecond per decision to build).

    ``denied``: a check denied (final; the quota is not read). Otherwise the quota step
    decides between ``denied`` by a window or the override's single use, and the outcome the
    checks reached: ``escalation`` (a human must approve) or allow (``override``: by a
    human's override token)."""

    org_id: str
    uapk_id: str
    capability: str
    policy_version: str
    now: float  # epoch seconds: the time the checks ran at
    timestamp: datetime  # the same instant, UTC
    trace: list[Step]
    agent: AgentPolicy | None = None
    policy: Verdict | None = None  # what the org's policy rules said (policies/rules.py)
    denied: Reason | None = None
    escalation: Reason | None = None
    override: Any = None  # gateway.overrides.OverrideOk when a valid token came with the action

    @property
    def reaches_quota(self) -> bool:
        return self.denied is None and self.agent is not None

    @property
    def override_mark(self) -> OverrideMark | None:
        """The override token the quota step marks used (spend) or looks up (check)."""
        if self.override is None:
            return None
        return OverrideMark(self.override.jti, int(self.override.expires_at))

    def spends(self, execute: bool) -> bool:
        """Only an execute that the checks allow spends quota (and marks its override token);
        everything else only reads."""
        return execute and self.escalation is None


@dataclass(slots=True)
class Decision:
    decision: Outcome
    reasons: list[Reason]
    trace: list[Step]
    capability: str
    policy_version: str
    timestamp: datetime
    agent: AgentPolicy | None = None
    quota: QuotaResult | None = None
    override: Any = None  # OverrideOk when a token allowed the action
    override_consumed: bool = False  # execute marked the token used
    policy: Verdict | None = None  # what the org's policy rules said (policies/rules.py)

    @property
    def limits(self) -> tuple[int, int] | None:
        if self.agent is None or not self.agent.active:
            return None
        return self.agent.max_actions_per_hour, self.agent.max_actions_per_day
