"""Capability tokens, the management side: issue (for an agent, or by an administrator for
delegation) and revoke. Each is one transaction that stores the change and hands its audit
event over before the commit (a token whose issue cannot be audited is never stored nor handed
out; a revocation that cannot be audited does not take effect). Verification, narrowing and
the revocation list are the gateway's (gateway/captokens.py).
"""
from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Any

import jwt
import msgspec

from audit.changes import ChangeContext
from core.clock import isoformat, utcnow
from core.errors import FieldIssue, NotFound, PermissionDenied, ValidationFailed
from core.tokens import CAPABILITY_TYP, sign
from policies.capabilities import covered_by_any, is_valid_pattern
from store import captokens as repo
from store.bus_messages import CapabilityTokenRevoked
from store.models import CapabilityToken
from store.runtime import Runtime
from store.unit_of_work import unit_of_work

CAPABILITY_AUDIENCE = "bastion-gateway"
CONSTRAINT_KEYS = {"max_amount", "currencies"}
MAX_CAPABILITIES = 64


class TokenRequest(msgspec.Struct, forbid_unknown_fields=True):
    uapk_id: str
    agent_id: str
    capabilities: list[str]
    expires_in_seconds: int | None = None
    constraints: dict[str, Any] | None = None


class TokenIssued(msgspec.Struct):
    token: str
    token_id: str
    capabilities: list[str]
    expires_at: str


# --- validation of a request to issue ----------------------------------------------------
def validate_request(capabilities: Any, constraints: Any, expires_in: Any, default_ttl: int, max_ttl: int) -> tuple[list[str], dict[str, Any], int]:
    issues: list[FieldIssue] = []
    if not isinstance(capabilities, list) or not capabilities:
        issues.append(FieldIssue("capabilities", "At least one capability is required."))
        capabilities = []
    elif len(capabilities) > MAX_CAPABILITIES:
        issues.append(FieldIssue("capabilities", f"At most {MAX_CAPABILITIES} capabilities."))
        capabilities = []
    for i, cap in enumerate(capabilities):
        if not is_valid_pattern(cap):
            issues.append(FieldIssue(f"capabilities.{i}", "Must be resource:action, each segment [a-z0-9_-]+ or a whole *."))
    constraints = {} if constraints is None else constraints
    if not isinstance(constraints, dict):
        issues.append(FieldIssue("constraints", "Must be an object."))
        constraints = {}
    for key, value in constraints.items():
        if key not in CONSTRAINT_KEYS:
            issues.append(FieldIssue(f"constraints.{key}", f"Unknown constraint; allowed: {', '.join(sorted(CONSTRAINT_KEYS))}."))
        elif key == "max_amount" and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or value < 0):
            issues.append(FieldIssue("constraints.max_amount", "Must be a finite number, at least 0."))
        elif key == "currencies" and (
            not isinstance(value, list) or not value or len(value) > 32
            or not all(isinstance(c, str) and len(c) == 3 and c.isascii() and c.isalpha() and c.isupper() for c in value)
        ):
            issues.append(FieldIssue("constraints.currencies", "Must be a list of 1-32 ISO 4217 codes (e.g. EUR)."))
    ttl = default_ttl if expires_in is None else expires_in
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 10 <= ttl <= max_ttl:
        issues.append(FieldIssue("expires_in_seconds", f"Must be an integer between 10 and {max_ttl}."))
    if issues:
        raise ValidationFailed("Request body failed validation.", issues)
    return list(dict.fromkeys(capabilities)), constraints, int(ttl)


async def issue(runtime: Runtime, org_id: str, data: TokenRequest, issued_via: str, issued_by: str,
                audit: ChangeContext) -> TokenIssued:
    """Validate, then sign a token for an active manifest (403 naming every capability it does
    not grant) and store it; its ``capability_token.issued`` event in the same transaction.
    Issuing invalidates nothing a gateway compiles: no version bump, no announcement."""
    s = runtime.settings
    capabilities, constraints, ttl = validate_request(
        data.capabilities, data.constraints, data.expires_in_seconds,
        s.capability_token_ttl_seconds, s.capability_token_max_ttl_seconds,
    )
    async with unit_of_work(runtime, org_id, audit=audit.hook, bump_version=False) as uow:
        manifest = await repo.active_manifest(uow.session, org_id, data.uapk_id)
        if manifest is None:
            raise PermissionDenied(f"UAPK '{data.uapk_id}' has no active manifest in this organization.")
        approved = list(manifest.approved or [])
        missing = [(i, c) for i, c in enumerate(capabilities) if not covered_by_any(approved, c)]
        if missing:
            raise PermissionDenied(
                "Capabilities not granted by the manifest: " + ", ".join(c for _, c in missing),
                [FieldIssue(f"capabilities.{i}", f"'{c}' is not granted by the active manifest.") for i, c in missing],
            )
        claims = {
            "iss": s.issuer,
            "aud": CAPABILITY_AUDIENCE,
            "sub": data.agent_id,
            "org_id": org_id,
            "uapk_id": data.uapk_id,
            "manifest_hash": manifest.manifest_hash,
            "capabilities": capabilities,
            "constraints": constraints,
        }
        token = sign(runtime.keys, CAPABILITY_TYP, claims, ttl, now=time.time())
        decoded = jwt.decode(token, options={"verify_signature": False})  # we just signed it
        expires_at = datetime.fromtimestamp(decoded["exp"], UTC)
        await repo.record(
            uow.session,
            id=decoded["jti"], org_id=org_id, uapk_id=data.uapk_id, agent_id=data.agent_id,
            manifest_hash=manifest.manifest_hash, capabilities=capabilities, constraints=constraints,
            kid=runtime.keys.active_kid, issued_via=issued_via, issued_by=issued_by,
            created_at=datetime.fromtimestamp(decoded["iat"], UTC), expires_at=expires_at,
        )
        issued = TokenIssued(token=token, token_id=str(decoded["jti"]), capabilities=list(decoded["capabilities"]),
                             expires_at=isoformat(expires_at) or "")
        await uow.record("capability_token.issued", {
            "token_id": issued.token_id, "capabilities": issued.capabilities, "expires_at": issued.expires_at,
            "via": issued_via,
        }, org_id=org_id, uapk_id=data.uapk_id, agent_id=data.agent_id)
    return issued


async def revoke(runtime: Runtime, org_id: str, token_id: str, by: str, audit: ChangeContext) -> CapabilityToken:
    """Revoke (idempotent: a second revocation keeps the first time and author, and is audited
    again); ``NotFound`` when the org has no such token. Its ``capability_token.revoked`` event
    is handed over before the commit, the bus message after it (every process refuses the token
    within a second). A revocation invalidates no compiled org: no version bump."""
    async with unit_of_work(runtime, org_id, audit=audit.hook, bump_version=False) as uow:
        row = await repo.revoke(uow.session, org_id, token_id, by, utcnow())
        if row is None:
            raise NotFound()
        await uow.record("capability_token.revoked", {"token_id": row.id}, org_id=org_id, uapk_id=row.uapk_id,
                         agent_id=row.agent_id)
        uow.announce(CapabilityTokenRevoked(org_id=org_id, jti=row.id, exp=row.expires_at.timestamp()))
    return row
