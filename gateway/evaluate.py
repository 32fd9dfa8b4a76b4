"""Step 1 of a decision: every check but the quota, without I/O.

``evaluate(request, compiled org, now, verifiers) -> Pending``: no quota, no audit, no
database, no Redis; the org is the in-memory ``CompiledOrg`` and the verifiers hold what they
need in memory (signing keys, cached token claims, revocations, spent override ids). So the
same function serves the live gateway, explain, policy tests and shadow mode.

Checks, in order (deny beats escalate beats allow):

1. ``manifest``: the uapk_id has an active manifest in the caller's org (and the caller's key
   may act as it) — else deny ``manifest_not_found`` / ``manifest_not_active``.
   ``capability_token``: a capability token, when sent, must be valid, unrevoked, for this
   agent and the active manifest version, and include the capability (it only narrows);
   a manifest with ``require_capability_token`` denies ``capability_token_required`` without one.
2. ``capability``: the capability is granted by an approved pattern of the active manifest
   — else deny ``capability_not_granted``; then the org's policy rules gate and narrow it
   (``policy_denied``, ``policy_conditions_not_met``; an org's deny is such a rule).
3. ``human_approval``: a capability matching ``require_human_approval`` (or an escalate policy
   rule) escalates (``requires_human_approval``) unless a valid override token for exactly this
   action comes with it; a bad or spent token denies with the token's reason code.

The quota step and the outcome follow in gateway/quota.py and gateway/settle.py.
"""
from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.capability import required_capability
from gateway.captokens import TokenProblem, check_action
from gateway.decision import (
    CAPABILITY_NOT_GRANTED,
    CAPABILITY_TOKEN_REQUIRED,
    CHECKS,
    MANIFEST_NOT_ACTIVE,
    MANIFEST_NOT_FOUND,
    OVERRIDE_TOKEN_ALREADY_USED,
    POLICY_CONDITIONS_NOT_MET,
    POLICY_DENIED,
    REQUIRES_HUMAN_APPROVAL,
    Pending,
    Reason,
    Step,
)
from gateway.overrides import OverrideRejected, bound_action
from gateway.schemas import GatewayActionRequest
from policies.compile import AgentPolicy, CompiledOrg
from policies.rules import NO_OBJECTION, RuleContext

OverrideChecker = Callable[..., Any]  # gateway.overrides.check_override bound to keys+settings


@dataclass(frozen=True, slots=True)
class Verifiers:
    """The in-memory verifiers a decision may need (all optional: a dry run without them
    refuses tokens, as a gateway that does not accept them would)."""

    # gateway.overrides.check_override bound to the signing keys and settings
    check_override: OverrideChecker | None = None
    # gateway.captokens.CapabilityVerifier: cached claims + revocation set
    capabilities: Any = None
    # gateway.approvals.UsedOverrides: spent override jtis known without Redis (its markers can
    # be lost in a restart without persistence; the database and the bus remember)
    used_overrides: Container[str] = frozenset()


NO_VERIFIERS = Verifiers()


def evaluate(
    req: GatewayActionRequest,
    org: CompiledOrg,
    now: float,
    verifiers: Verifiers = NO_VERIFIERS,
    *,
    capability: str | None = None,
    allowed_uapk_ids: tuple[str, ...] | None = None,
) -> Pending:
    """``capability``: the result of ``required_capability(req)`` when the caller already ran it
    (it is run here otherwise). ``allowed_uapk_ids``: the agents the caller's key may act as."""
    cap = capability or required_capability(req)
    p = Pending(org.org_id, req.uapk_id, cap, org.policy_version, now, datetime.fromtimestamp(now, UTC), [])
    trace = p.trace

    # 1. manifest
    agent = org.agent(req.uapk_id)
    if allowed_uapk_ids is not None and req.uapk_id not in allowed_uapk_ids:
        agent = None  # this key may not act as that agent: reveal nothing
    if agent is None:
        return _deny(p, "manifest", Reason(
            MANIFEST_NOT_FOUND, f"No manifest for uapk_id '{req.uapk_id}'.", {"uapk_id": req.uapk_id}))
    p.agent = agent
    if not agent.active:
        # The status of the version that would be in force (policies.compile.current_manifests).
        version = agent.manifest_version or ""
        return _deny(p, "manifest", Reason(
            MANIFEST_NOT_ACTIVE,
            f"The manifest of '{req.uapk_id}'{f' (version {version})' if version else ''} is {agent.status}, "
            "not active.",
            {"uapk_id": req.uapk_id, "status": agent.status, "version": version or None}),
            rule=f"status:{agent.status}")
    trace.append(Step("manifest", "pass", f"active manifest {agent.manifest_version or ''}".strip(),
                      f"manifest:{agent.manifest_hash}"))

    # 1b. capability token (only narrows: the manifest must still grant the capability)
    problem = _capability_token(req, org.org_id, agent, cap, now, verifiers.capabilities)
    if problem is not None:
        return _deny(p, "capability_token", problem[0], rule=problem[1])
    if req.capability_token:
        trace.append(Step("capability_token", "pass", "token valid and includes the capability"))
    else:
        trace.append(Step("capability_token", "skip", "no token sent (none required)"))

    # 2. capability
    grant = agent.grant(cap)
    if not grant.granted:  # no approved pattern matches (grants name no rule then)
        return _deny(p, "capability", Reason(CAPABILITY_NOT_GRANTED, f"Capability '{cap}' is not granted to '{req.uapk_id}'.",
                                             {"capability": cap}))
    # 2b. org policy rules gate and narrow what the manifest granted (never widen)
    verdict = p.policy = (org.rules.evaluate(req.uapk_id, agent.team, cap, RuleContext.of_request(req, now))
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
        return _deny(p, "capability", reason, rule=verdict.rule_ref)
    trace.append(Step("capability", "pass", f"'{cap}' granted", grant.rule))

    # 3. human approval
    human_rule = agent.needs_human(cap)
    human_ref = f"require_human_approval:{human_rule}"
    missing: tuple[str, ...] = ()
    if human_rule is None and verdict.effect == "escalate" and verdict.rule is not None:
        human_rule, human_ref = verdict.rule_ref, verdict.rule_ref  # an escalate policy rule
        missing = verdict.missing
    if human_rule is None:
        trace.append(Step("human_approval", "pass", "not required"))
        return p
    if not req.override_token:
        p.escalation = Reason(REQUIRES_HUMAN_APPROVAL, f"Capability '{cap}' requires human approval."
                              + _missing_note(missing, "holds"),
                              _with_missing({"capability": cap, "rule": human_rule}, missing))
        trace.append(Step("human_approval", "escalate", "a human must approve this action", human_ref))
        return p
    ok = _verify_override(req, org.org_id, cap, verifiers.check_override)
    if getattr(ok, "jti", None) is None:
        return _deny(p, "human_approval", Reason(
            str(getattr(ok, "code", "override_token_invalid")),
            str(getattr(ok, "message", "The override token is not valid.")),
            {"capability": cap}), rule=human_ref)
    if ok.jti in verifiers.used_overrides:
        return _deny(p, "human_approval", Reason(
            OVERRIDE_TOKEN_ALREADY_USED, "The override token was already used.", {"capability": cap}),
            rule="override:single-use")
    p.override = ok
    trace.append(Step("human_approval", "pass", "override token accepted", human_ref))
    return p


def _deny(p: Pending, check: str, reason: Reason, rule: str | None = None) -> Pending:
    """A check denied: the decision is final, the later checks are skipped."""
    p.denied = reason
    p.trace.append(Step(check, "fail", reason.message, rule))
    done = {s.check for s in p.trace}
    p.trace.extend(Step(later, "skip", "not evaluated: an earlier check denied") for later in CHECKS
                   if later not in done)
    return p


def _capability_token(
    req: GatewayActionRequest, org_id: str, agent: AgentPolicy, cap: str, now: float, verifier: Any
) -> tuple[Reason, str | None] | None:
    if not req.capability_token:
        if agent.require_capability_token:
            return Reason(CAPABILITY_TOKEN_REQUIRED, "This agent's manifest requires a capability token.",
                          {"capability": cap}), "require_capability_token"
        return None
    if verifier is None:
        return Reason("capability_token_invalid", "Capability tokens are not accepted here.", {}), None
    claims = verifier.verify(req.capability_token, now)
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


def _verify_override(req: GatewayActionRequest, org_id: str, cap: str, check: OverrideChecker | None) -> Any:
    if check is None:
        return OverrideRejected("override_token_invalid", "Override tokens are not accepted here.")
    # Bound to the whole action (tool, type, params, amount, currency, description,
    # counterparty), not only to what the capability check looked at.
    return check(
        req.override_token,
        org_id=org_id,
        uapk_id=req.uapk_id,
        agent_id=req.agent_id,
        capability=cap,
        **bound_action(req.action, req.counterparty),
    )


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
