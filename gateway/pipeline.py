"""The decision pipeline: (request, compiled org snapshot, quota backend, clock) -> decision.

No HTTP and no SQL: the caller hands in the org's ``CompiledOrg`` (in memory) and a quota
backend; a decision costs at most one quota call (one Redis round trip) and a few set probes.

Checks, in order (deny beats escalate beats allow):

1. ``manifest``: the uapk_id has an active manifest in the caller's org (and the caller's key
   may act as it) — else deny ``manifest_not_found`` / ``manifest_not_active``.
   ``capability_token``: a capability token, when sent, must be valid, unrevoked, for this
   agent and the active manifest version, and include the capability (it only narrows);
   a manifest with ``require_capability_token`` denies ``capability_token_required`` without one.
2. ``capability``: the capability is granted by an approved pattern and no deny rule matches
   — else deny ``capability_not_granted``.
3. ``human_approval``: a capability matching ``require_human_approval`` escalates
   (``requires_human_approval``) unless a valid override token for exactly this action comes
   with it; a bad token denies with the token's reason code.
4. ``quota``: hourly and daily windows. An allowed execute spends one unit of each (and marks
   the override token used); everything else only reads. An escalation is still checked: an
   exhausted budget denies (deny beats escalate).
5. allow: ``all_checks_passed`` or ``override_token_accepted``.

Once a check denies, the later ones are skipped (trace result ``skip``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Literal

from core.errors import FieldIssue, ValidationFailed
from core.text import text_issue
from gateway.schemas import GatewayActionRequest
from policies.capabilities import is_concrete
from policies.compile import AgentPolicy, CompiledOrg
from policies.rules import NO_OBJECTION, RuleContext, Verdict
from store.quotas import DAY_EXHAUSTED, HOUR_EXHAUSTED, OVERRIDE_USED, OverrideMark, QuotaBackend, QuotaResult

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

CHECKS = ("manifest", "capability_token", "capability", "human_approval", "quota")
OverrideChecker = Callable[..., Any]  # gateway.overrides.check_override bound to keys+settings


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


def required_capability(req: GatewayActionRequest) -> str:
    """Check what the schema cannot say and return the capability the action needs,
    ``"{tool}:{type}"``; raise 400 naming every bad field.

    The one validation of an action, run on every path that takes one (execute, evaluate,
    explain, policy test cases, the CLI) before any state is touched:

    * ``tool`` and ``type`` are capability segments, so the capability is what the action does.
      ``action.capability`` may be sent but must equal ``tool:type``: a label that differs
      would let an agent name ``crm:read`` while doing ``crm:delete`` and so skip
      ``require_human_approval`` and deny rules (only the label reached those checks).
    * ``amount`` is a finite number >= 0: a negative one would slip under every
      ``amount_above`` rule and every token ``max_amount``.
    * text shown to approvers (``description``, ``currency``, every counterparty field) holds
      no control, bidirectional or invisible characters (``core.text``: ANSI escapes, CR/LF,
      U+202E, zero-width characters); ``tool`` and ``type`` are capability segments already.
    """
    action = req.action
    issues: list[FieldIssue] = []
    cap = f"{action.tool}:{action.type}"
    if not is_concrete(cap):
        if not is_concrete(f"{action.tool}:x"):
            issues.append(FieldIssue("action.tool", "Must match [a-z0-9_-]+ (the capability is tool:type)."))
        if not is_concrete(f"x:{action.type}"):
            issues.append(FieldIssue("action.type", "Must match [a-z0-9_-]+ (the capability is tool:type)."))
    if action.capability is not None:
        if not is_concrete(action.capability):
            issues.append(FieldIssue("action.capability", "Must be a concrete capability 'resource:action' "
                                     "(segments [a-z0-9_-]+, no '*')."))
        elif action.capability != cap:
            issues.append(FieldIssue("action.capability", "Must equal 'tool:type' of the action when sent "
                                     "(the capability is what the action does)."))
    amount = action.amount
    # The schema says >= 0 for JSON; a struct built in code or from YAML (a policy test file)
    # can still carry a negative number, inf or NaN (``not amount >= 0`` is true for NaN).
    if amount is not None and (isinstance(amount, bool) or not math.isfinite(amount) or not amount >= 0):
        issues.append(FieldIssue("action.amount", "Must be a finite number, at least 0."))
    _shown_text(req, issues)
    if issues:
        raise ValidationFailed(details=issues)
    return cap


def _shown_text(req: GatewayActionRequest, issues: list[FieldIssue]) -> None:
    action, cp = req.action, req.counterparty
    texts = [("action.description", action.description), ("action.currency", action.currency)]
    if cp is not None:
        texts += [("counterparty.id", cp.id), ("counterparty.name", cp.name), ("counterparty.email", cp.email),
                  ("counterparty.domain", cp.domain), ("counterparty.jurisdiction", cp.jurisdiction)]
    for name, value in texts:
        if value is not None:
            problem = text_issue(value)
            if problem is not None:
                issues.append(FieldIssue(name, problem))


class Pipeline:
    def __init__(
        self,
        quotas: QuotaBackend,
        check_override: OverrideChecker | None = None,
        clock: Callable[[], float] = time.time,
        cap_verifier: Any = None,
        used_overrides: Any = None,
    ):
        self.quotas = quotas
        # gateway.approvals.UsedOverrides: spent jtis known without Redis (its markers can be
        # lost in a restart without persistence; the database and the bus remember).
        self.used_overrides = used_overrides if used_overrides is not None else frozenset()
        self.check_override = check_override
        self.clock = clock
        # gateway.captokens.CapabilityVerifier (in-memory: cached claims + revocation set).
        self.cap_verifier = cap_verifier

    async def decide(
        self,
        req: GatewayActionRequest,
        org: CompiledOrg,
        *,
        spend: bool,
        allowed_uapk_ids: tuple[str, ...] | None = None,
        capability: str | None = None,
        audit: Any = None,
    ) -> Decision:
        """``spend=True`` for execute, ``False`` for evaluate (a dry run). ``audit``: a
        gateway.recorder.DecisionRecorder whose event rides along with the quota call."""
        cap = capability or required_capability(req)
        now = self.clock()
        d = Decision("allow", [], [], cap, org.policy_version, datetime.fromtimestamp(now, timezone.utc))

        # 1. manifest
        agent = org.agent(req.uapk_id)
        if allowed_uapk_ids is not None and req.uapk_id not in allowed_uapk_ids:
            agent = None  # this key may not act as that agent: reveal nothing
        if agent is None:
            return self._deny(d, "manifest", Reason(
                MANIFEST_NOT_FOUND, f"No manifest for uapk_id '{req.uapk_id}'.", {"uapk_id": req.uapk_id}))
        d.agent = agent
        if not agent.active:
            # The status of the version that would be in force (policies.compile.current_manifests).
            version = agent.manifest_version or ""
            return self._deny(d, "manifest", Reason(
                MANIFEST_NOT_ACTIVE,
                f"The manifest of '{req.uapk_id}'{f' (version {version})' if version else ''} is {agent.status}, "
                "not active.",
                {"uapk_id": req.uapk_id, "status": agent.status, "version": version or None}),
                rule=f"status:{agent.status}")
        d.trace.append(Step("manifest", "pass", f"active manifest {agent.manifest_version or ''}".strip(),
                            f"manifest:{agent.manifest_hash}"))

        # 1b. capability token (only narrows: the manifest must still grant the capability)
        problem = self._capability_token(req, org.org_id, agent, cap, now)
        if problem is not None:
            return self._deny(d, "capability_token", problem[0], rule=problem[1])
        if req.capability_token:
            d.trace.append(Step("capability_token", "pass", "token valid and includes the capability"))
        else:
            d.trace.append(Step("capability_token", "skip", "no token sent (none required)"))

        # 2. capability
        grant = agent.grant(cap)
        if not grant.granted:
            detail = {"capability": cap}
            if grant.rule:
                detail["rule"] = grant.rule
                msg = f"Capability '{cap}' is forbidden by the rule '{grant.rule}'."
            else:
                msg = f"Capability '{cap}' is not granted to '{req.uapk_id}'."
            return self._deny(d, "capability", Reason(CAPABILITY_NOT_GRANTED, msg, detail), rule=grant.rule)
        # 2b. org policy rules gate and narrow what the manifest granted (never widen)
        verdict = d.policy = (org.rules.evaluate(req.uapk_id, agent.team, cap, RuleContext.of_request(req, now))
                              if org.rules else NO_OBJECTION)
        if verdict.effect in ("deny", "narrowed") and verdict.rule is not None:
            rid = verdict.rule.id
            if verdict.effect == "deny":
                reason = Reason(POLICY_DENIED, f"Capability '{cap}' is denied by the policy rule '{rid}'."
                                + _missing_note(verdict.missing, "holds"),
                                _with_missing({"capability": cap, "rule": rid}, verdict.missing))
            else:
                reason = Reason(POLICY_CONDITIONS_NOT_MET, f"Capability '{cap}' is allowed only under the conditions "
                                f"of the policy rule '{rid}', which this action does not meet."
                                + _missing_note(verdict.missing, "fails"),
                                _with_missing({"capability": cap, "rule": rid}, verdict.missing))
            return self._deny(d, "capability", reason, rule=verdict.rule_ref)
        d.trace.append(Step("capability", "pass", f"'{cap}' granted", grant.rule))

        # 3. human approval
        escalate: Reason | None = None
        mark: OverrideMark | None = None
        human_rule = agent.needs_human(cap)
        human_ref = f"require_human_approval:{human_rule}"
        missing: tuple[str, ...] = ()
        if human_rule is None and verdict.effect == "escalate" and verdict.rule is not None:
            human_rule, human_ref = verdict.rule_ref, verdict.rule_ref  # an escalate policy rule
            missing = verdict.missing
        if human_rule is None:
            d.trace.append(Step("human_approval", "pass", "not required"))
        elif req.override_token:
            verdict = self._verify_override(req, org.org_id, cap, now)
            if getattr(verdict, "jti", None) is None:
                return self._deny(d, "human_approval", Reason(
                    str(getattr(verdict, "code", "override_token_invalid")),
                    str(getattr(verdict, "message", "The override token is not valid.")),
                    {"capability": cap}), rule=human_ref)
            if verdict.jti in self.used_overrides:
                return self._deny(d, "human_approval", Reason(
                    OVERRIDE_TOKEN_ALREADY_USED, "The override token was already used.", {"capability": cap}),
                    rule="override:single-use")
            d.override = verdict
            mark = OverrideMark(verdict.jti, int(verdict.expires_at))
            d.trace.append(Step("human_approval", "pass", "override token accepted", human_ref))
        else:
            escalate = Reason(REQUIRES_HUMAN_APPROVAL, f"Capability '{cap}' requires human approval."
                              + _missing_note(missing, "holds"),
                              _with_missing({"capability": cap, "rule": human_rule}, missing))
            d.trace.append(Step("human_approval", "escalate", "a human must approve this action", human_ref))

        # 4. quotas (one round trip; spends only an allowed execute)
        hour, day = agent.max_actions_per_hour, agent.max_actions_per_day
        entry = audit.quota_entry(d, escalate) if audit is not None else None
        extra = {"audit": entry} if entry is not None else {}
        if spend and escalate is None:
            q = await self.quotas.spend(org.org_id, req.uapk_id, hour, day, mark, **extra)
        else:
            q = await self.quotas.check(org.org_id, req.uapk_id, hour, day, mark, **extra)
        d.quota = q
        if q.status == OVERRIDE_USED:
            return self._deny(d, "quota", Reason(
                OVERRIDE_TOKEN_ALREADY_USED, "The override token was already used.", {"capability": cap}),
                rule="override:single-use")
        if q.status == DAY_EXHAUSTED:
            reset = q.day_reset
            return self._deny(d, "quota", Reason(
                BUDGET_EXCEEDED, f"Daily budget of {day} actions exhausted.",
                {"limit": day, "remaining": 0, "reset_at": _rfc3339(reset), "retry_after": q.retry_after(reset),
                 "window": "day"}), rule=f"max_actions_per_day:{day}")
        if q.status == HOUR_EXHAUSTED:
            reset = q.hour_reset
            return self._deny(d, "quota", Reason(
                HOURLY_BUDGET_EXCEEDED, f"Hourly budget of {hour} actions exhausted.",
                {"limit": hour, "remaining": 0, "reset_at": _rfc3339(reset), "retry_after": q.retry_after(reset),
                 "window": "hour"}), rule=f"max_actions_per_hour:{hour}")
        d.trace.append(Step(
            "quota", "pass",
            f"hour {q.hour_used}/{hour}, day {q.day_used}/{day}" + (" (spent)" if q.spent else " (not spent)"),
            f"max_actions_per_hour:{hour},max_actions_per_day:{day}"))

        # 5. outcome
        if escalate is not None:
            d.decision = "escalate"
            d.reasons = [escalate]
            return d
        if d.override is not None:
            d.override_consumed = q.spent
            d.reasons = [Reason(OVERRIDE_TOKEN_ACCEPTED, "Allowed by a human's override token.",
                                {"approval_id": d.override.approval_id})]
        else:
            d.reasons = [Reason(ALL_CHECKS_PASSED, "All checks passed.", {})]
        return d

    def _capability_token(
        self, req: GatewayActionRequest, org_id: str, agent: AgentPolicy, cap: str, now: float
    ) -> tuple[Reason, str | None] | None:
        if not req.capability_token:
            if agent.require_capability_token:
                return Reason(CAPABILITY_TOKEN_REQUIRED, "This agent's manifest requires a capability token.",
                              {"capability": cap}), "require_capability_token"
            return None
        if self.cap_verifier is None:
            return Reason("capability_token_invalid", "Capability tokens are not accepted here.", {}), None
        from gateway.captokens import TokenProblem, check_action

        claims = self.cap_verifier.verify(req.capability_token, now)
        if isinstance(claims, TokenProblem):
            return Reason(claims.code, claims.message, dict(claims.details)), None
        bad = check_action(
            claims, org_id=org_id, uapk_id=req.uapk_id, agent_id=req.agent_id,
            manifest_hash=agent.manifest_hash or "", capability=cap,
            amount=req.action.amount, currency=req.action.currency,
        )
        if bad is not None:
            return Reason(bad.code, bad.message, dict(bad.details)), f"token:{claims.jti}"
        return None

    def _verify_override(self, req: GatewayActionRequest, org_id: str, cap: str, now: float) -> Any:
        from gateway.overrides import OverrideRejected, bound_action

        if self.check_override is None:
            return OverrideRejected("override_token_invalid", "Override tokens are not accepted here.")
        # Bound to the whole action (tool, type, params, amount, currency, description,
        # counterparty), not only to what the capability check looked at.
        return self.check_override(
            req.override_token,
            org_id=org_id,
            uapk_id=req.uapk_id,
            agent_id=req.agent_id,
            capability=cap,
            **bound_action(req.action, req.counterparty),
        )

    @staticmethod
    def _deny(d: Decision, check: str, reason: Reason, rule: str | None = None) -> Decision:
        d.decision = "deny"
        d.reasons = [reason]
        d.trace.append(Step(check, "fail", reason.message, rule))
        done = {s.check for s in d.trace}
        for later in CHECKS:
            if later not in done:
                d.trace.append(Step(later, "skip", "not evaluated: an earlier check denied"))
        return d


def _missing_note(missing: tuple[str, ...], outcome: str) -> str:
    """Why a fail-closed rule decided: the request fields its conditions could not look at."""
    if not missing:
        return ""
    return (f" The action does not carry {', '.join(missing)}, so the rule's condition on "
            f"{'it' if len(missing) == 1 else 'them'} {outcome} (fail closed).")


def _with_missing(details: dict[str, Any], missing: tuple[str, ...]) -> dict[str, Any]:
    if missing:
        details["missing"] = list(missing)
    return details


def _rfc3339(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat().replace("+00:00", "Z")
