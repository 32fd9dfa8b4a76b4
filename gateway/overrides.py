"""Override tokens: the one-shot permission a human grants to an escalated action.

An override token is an EdDSA-signed JWT with its own type (``bastion-override+jwt``) and
audience (``bastion-override``), so no other Bastion token (a session, a capability token)
is ever accepted in its place. It is bound to

* the approval it came from (``approval_id``),
* the organization, the manifest and the agent (``org_id``, ``uapk_id``, ``sub``/``agent_id``),
* the whole action, every field a decision or a human could weigh: ``action_hash`` is the
  SHA-256 hex of the RFC 8785 canonical JSON of ``{"org", "uapk_id", "agent_id",
  "capability", "tool", "type", "params", "amount", "currency", "description",
  "counterparty"}`` (see :func:`bound_action`). A token approved for a transfer to Alice/DE
  does not allow one to Mallory/RU, nor ``type: wire_all_funds`` under the same capability.

``check_override`` is pure (signature, type, expiry and binding; no I/O). Single use is not
decided here: the gateway marks the token's ``jti`` as spent atomically together with the
quota it consumes, and only when the execute it allows is actually allowed.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from core.canonical import sha256_hex
from core.settings import Settings
from core.tokens import OVERRIDE_TYP, Keys, TokenInvalid, sign, verify

OVERRIDE_AUDIENCE = "bastion-override"

INVALID = "override_token_invalid"
EXPIRED = "override_token_expired"
MISMATCH = "override_token_action_mismatch"

_REQUIRED = ("exp", "iat", "nbf", "jti", "iss", "aud", "sub", "org_id", "uapk_id", "agent_id", "approval_id", "action_hash")


@dataclass(frozen=True, slots=True)
class OverrideOk:
    jti: str
    approval_id: str
    expires_at: int  # epoch seconds


@dataclass(frozen=True, slots=True)
class OverrideRejected:
    code: str  # override_token_invalid | override_token_expired | override_token_action_mismatch
    message: str


_COUNTERPARTY_FIELDS = ("id", "name", "email", "domain", "jurisdiction")


def _field(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def bound_action(action: Any, counterparty: Any = None) -> dict[str, Any]:
    """The action's fields an override token is bound to, as keyword arguments of
    :func:`action_hash`, :func:`issue_override` and :func:`check_override`.

    ``action`` is the request's ``Action`` struct or the approval's stored dict (same keys);
    ``counterparty`` the request's ``Counterparty`` or the stored dict. A counterparty is
    compared field by field (absent and ``null`` fields alike; one without any field is no
    counterparty). ``action.capability`` is not taken from here: the caller passes the
    capability the action was decided as."""
    params = _field(action, "params")
    cp: dict[str, Any] | None = None
    if counterparty is not None:
        cp = {k: v for k in _COUNTERPARTY_FIELDS if (v := _field(counterparty, k)) is not None} or None
    return {
        "tool": _field(action, "tool"),
        "type": _field(action, "type"),
        "params": params if isinstance(params, Mapping) else {},
        "amount": _field(action, "amount"),
        "currency": _field(action, "currency"),
        "description": _field(action, "description"),
        "counterparty": cp,
    }


def action_hash(
    *,
    org_id: str,
    uapk_id: str,
    agent_id: str,
    capability: str,
    params: Mapping[str, Any] | None,
    amount: float | None,
    currency: str | None,
    tool: str | None = None,
    type: str | None = None,
    description: str | None = None,
    counterparty: Mapping[str, Any] | None = None,
) -> str:
    """SHA-256 hex of the RFC 8785 canonical JSON of the action an override is bound to
    (every key always present, ``null`` when absent; build the action's part with
    :func:`bound_action`).

    Raises ``ValueError`` when the values cannot be canonicalised (NaN, integers beyond
    2**53, non-JSON types)."""
    doc = {
        "org": org_id,
        "uapk_id": uapk_id,
        "agent_id": agent_id,
        "capability": capability,
        "tool": tool,
        "type": type,
        "params": dict(params) if params is not None else {},
        "amount": amount,
        "currency": currency,
        "description": description,
        "counterparty": dict(counterparty) if counterparty is not None else None,
    }
    try:
        return sha256_hex(doc)
    except Exception as exc:  # rfc8785 raises its own domain errors, TypeError for others
        raise ValueError(f"action cannot be canonicalised: {exc}") from None


def issue_override(
    keys: Keys,
    settings: Settings,
    *,
    approval_id: str,
    org_id: str,
    uapk_id: str,
    agent_id: str,
    capability: str,
    params: Mapping[str, Any] | None,
    amount: float | None,
    currency: str | None,
    tool: str | None = None,
    type: str | None = None,
    description: str | None = None,
    counterparty: Mapping[str, Any] | None = None,
    ttl_seconds: int | None = None,
    now: float | None = None,
    jti: str | None = None,
) -> tuple[str, str, int]:
    """Sign an override token for one approved action. Returns ``(token, jti, expires_at)``.

    Ed25519 signatures are deterministic: the same claims (``jti``, ``now``, ttl) and key give
    the same token, which is how the agent's poll re-creates it without it ever being stored."""
    ttl = settings.override_token_ttl_seconds if ttl_seconds is None else int(ttl_seconds)
    if ttl <= 0:
        raise ValueError("ttl_seconds must be positive")
    issued = int(time.time() if now is None else now)
    jti = jti or uuid.uuid4().hex
    digest = action_hash(
        org_id=org_id, uapk_id=uapk_id, agent_id=agent_id, capability=capability, params=params,
        amount=amount, currency=currency, tool=tool, type=type, description=description,
        counterparty=counterparty,
    )
    claims = {
        "iss": settings.issuer,
        "aud": OVERRIDE_AUDIENCE,
        "sub": agent_id,
        "jti": jti,
        "org_id": org_id,
        "uapk_id": uapk_id,
        "agent_id": agent_id,
        "capability": capability,
        "approval_id": approval_id,
        "action_hash": digest,
    }
    token = sign(keys, OVERRIDE_TYP, claims, ttl, now=issued)
    return token, jti, issued + ttl


def check_override(
    keys: Keys,
    settings: Settings,
    token: str,
    *,
    org_id: str,
    uapk_id: str,
    agent_id: str,
    capability: str,
    params: Mapping[str, Any] | None,
    amount: float | None,
    currency: str | None,
    tool: str | None = None,
    type: str | None = None,
    description: str | None = None,
    counterparty: Mapping[str, Any] | None = None,
    now: Callable[[], float] | None = None,
) -> OverrideOk | OverrideRejected:
    """Verify an override token presented with an action. Pure and fast: no I/O.

    Returns ``OverrideOk`` when the token is genuine, unexpired and bound to exactly this
    organization, manifest, agent and action; otherwise ``OverrideRejected`` with the reason
    code the gateway reports."""
    clock = now or time.time
    try:
        claims = verify(
            keys, token, OVERRIDE_TYP, issuer=settings.issuer, audience=OVERRIDE_AUDIENCE,
            required=_REQUIRED,
        )
    except TokenInvalid as exc:
        if exc.reason == "expired":
            return OverrideRejected(EXPIRED, "The override token has expired.")
        return OverrideRejected(INVALID, f"The override token is not valid: {exc}.")
    exp, jti, approval_id = claims.get("exp"), claims.get("jti"), claims.get("approval_id")
    if not isinstance(exp, int) or not isinstance(jti, str) or not jti or len(jti) > 64:
        return OverrideRejected(INVALID, "The override token is not valid: bad claims.")
    if not isinstance(approval_id, str) or not approval_id or len(approval_id) > 64:
        return OverrideRejected(INVALID, "The override token is not valid: bad approval_id.")
    # No grace period for a one-shot permission: the JWT library's clock-skew leeway is meant
    # for tokens from other issuers; this one was signed by us and expires when it says.
    if exp <= int(clock()):
        return OverrideRejected(EXPIRED, "The override token has expired.")
    if (
        claims.get("org_id") != org_id
        or claims.get("uapk_id") != uapk_id
        or claims.get("sub") != agent_id
        or claims.get("agent_id") != agent_id
    ):
        return OverrideRejected(MISMATCH, "The override token was issued for another agent.")
    try:
        expected = action_hash(
            org_id=org_id, uapk_id=uapk_id, agent_id=agent_id, capability=capability, params=params,
            amount=amount, currency=currency, tool=tool, type=type, description=description,
            counterparty=counterparty,
        )
    except ValueError:
        return OverrideRejected(MISMATCH, "The override token was issued for another action.")
    if claims.get("action_hash") != expected:
        return OverrideRejected(MISMATCH, "The override token was issued for another action.")
    return OverrideOk(jti=jti, approval_id=approval_id, expires_at=exp)
