"""The one validation of an action, before any state is read: ``required_capability``."""
from __future__ import annotations

import math

from core.errors import FieldIssue, ValidationFailed
from core.text import text_issue
from gateway.schemas import GatewayActionRequest
from policies.capabilities import is_concrete


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
