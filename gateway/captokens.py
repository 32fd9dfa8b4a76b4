"""Capability tokens: issue, verify, narrow, revoke.

A capability token is an EdDSA JWT (typ ``bastion-capability+jwt``) that lets an agent, or a
tool it calls, prove what it may do for a short time. It only ever narrows: at the gateway the
action's capability must be in the token AND granted by the still-active manifest the token
was issued against (``manifest_hash``).

Hot path: verifying an Ed25519 signature costs tens of microseconds, so verified claims are
cached by token string (bounded, and re-checked against ``exp``/``nbf`` on every use);
revocation is an in-memory set fed by the change bus (pub/sub) and a periodic catch-up
query, so a decision never makes an extra round trip for it.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jwt

from audit.changes import ChangeContext
from core.canonical import canonical_json
from core.clock import isoformat, utcnow
from core.errors import FieldIssue, PermissionDenied, ValidationFailed
from core.tasks import cancel, every
from core.tokens import CAPABILITY_TYP, LEEWAY_SECONDS, TokenInvalid, sign, verify
from gateway.idsets import ExpiringIds
from policies.capabilities import covered_by_any, is_valid_pattern, matches_any
from store import captokens as repo
from store.bus_messages import CapabilityTokenRevoked, Change, ManifestChanged
from store.changes import announce
from store.runtime import Runtime

log = logging.getLogger("bastion.captokens")

CAPABILITY_AUDIENCE = "bastion-gateway"
REQUIRED_CLAIMS = ("iss", "aud", "sub", "org_id", "uapk_id", "manifest_hash", "capabilities", "constraints", "iat", "nbf", "exp", "jti")
CONSTRAINT_KEYS = {"max_amount", "currencies"}
MAX_CAPABILITIES = 64


@dataclass(frozen=True, slots=True)
class CapClaims:
    jti: str
    org_id: str
    uapk_id: str
    agent_id: str
    manifest_hash: str
    capabilities: tuple[str, ...]
    constraints: dict[str, Any]
    exp: int
    nbf: int
    kid: str = ""


@dataclass(frozen=True, slots=True)
class TokenProblem:
    code: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)


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


async def issue(
    runtime: Runtime,
    *,
    org_id: str,
    uapk_id: str,
    agent_id: str,
    capabilities: list[str],
    constraints: dict[str, Any],
    ttl: int,
    issued_via: str,
    issued_by: str,
    audit: ChangeContext,
) -> tuple[str, CapClaims, datetime]:
    """Sign a token for an active manifest; 403 naming every capability it does not grant.

    The ``capability_token.issued`` event goes to ``audit`` inside the transaction that stores
    the token: a token whose issue cannot be audited is never stored nor handed out."""
    s = runtime.settings
    async with runtime.sessions() as session, session.begin():
        manifest = await repo.active_manifest(session, org_id, uapk_id)
        if manifest is None:
            raise PermissionDenied(f"UAPK '{uapk_id}' has no active manifest in this organization.")
        approved = list(manifest.approved or [])
        missing = [(i, c) for i, c in enumerate(capabilities) if not covered_by_any(approved, c)]
        if missing:
            raise PermissionDenied(
                "Capabilities not granted by the manifest: " + ", ".join(c for _, c in missing),
                [FieldIssue(f"capabilities.{i}", f"'{c}' is not granted by the active manifest.") for i, c in missing],
            )
        now = time.time()
        claims = {
            "iss": s.issuer,
            "aud": CAPABILITY_AUDIENCE,
            "sub": agent_id,
            "org_id": org_id,
            "uapk_id": uapk_id,
            "manifest_hash": manifest.manifest_hash,
            "capabilities": capabilities,
            "constraints": constraints,
        }
        token = sign(runtime.keys, CAPABILITY_TYP, claims, ttl, now=now)
        decoded = _decode_trusted(token)
        expires_at = datetime.fromtimestamp(decoded["exp"], UTC)
        await repo.record(
            session,
            id=decoded["jti"], org_id=org_id, uapk_id=uapk_id, agent_id=agent_id,
            manifest_hash=manifest.manifest_hash, capabilities=capabilities, constraints=constraints,
            kid=runtime.keys.active_kid, issued_via=issued_via, issued_by=issued_by,
            created_at=datetime.fromtimestamp(decoded["iat"], UTC), expires_at=expires_at,
        )
        await audit.record(
            "capability_token.issued", org_id=org_id, uapk_id=uapk_id, agent_id=agent_id,
            details={"token_id": decoded["jti"], "capabilities": list(capabilities),
                     "expires_at": isoformat(expires_at), "via": issued_via},
        )
    return token, _claims(decoded, runtime.keys.active_kid), expires_at


def _decode_trusted(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})  # we just signed it


def _claims(d: dict[str, Any], kid: str) -> CapClaims:
    return CapClaims(
        jti=str(d["jti"]), org_id=str(d["org_id"]), uapk_id=str(d["uapk_id"]), agent_id=str(d["sub"]),
        manifest_hash=str(d["manifest_hash"]), capabilities=tuple(d["capabilities"]),
        constraints=dict(d["constraints"]), exp=int(d["exp"]), nbf=int(d["nbf"]), kid=kid,
    )


# --- revocation --------------------------------------------------------------------------
class RevocationList(ExpiringIds):
    """jti -> expiry of revoked capability tokens still worth remembering."""

    def __init__(self, runtime: Runtime | None = None) -> None:
        super().__init__(CapabilityTokenRevoked, _revoked_loader)
        self._runtime = runtime

    async def on_change(self, message: Change) -> None:
        await super().on_change(message)
        if (isinstance(message, ManifestChanged) and message.status in ("suspended", "revoked")
                and self._runtime is not None):
            # Suspending or revoking a manifest revokes its tokens in the same transaction
            # (store.manifests.transition), without one message per token: learn them now, so
            # that a later reactivation never finds them missing. The 2 s catch-up covers a
            # message this process missed.
            try:
                await self.refresh(self._runtime)
            except Exception:
                log.warning("revocation refresh after a manifest change failed; the catch-up retries",
                            exc_info=True)


async def _revoked_loader(session: Any, since: datetime | None, now: datetime) -> list[tuple[str, datetime]]:
    return [(jti, exp) for jti, exp, _ in await repo.revoked_since(session, since, now)]


async def revoke(runtime: Runtime, org_id: str, token_id: str, by: str, audit: ChangeContext) -> Any:
    """Revoke (idempotent); None when the org has no such token. The ``capability_token.revoked``
    event goes to ``audit`` before the revocation commits: no revocation takes effect unaudited."""
    async with runtime.sessions() as session, session.begin():
        row = await repo.revoke(session, org_id, token_id, by, utcnow())
        if row is not None:
            await audit.record("capability_token.revoked", org_id=org_id, uapk_id=row.uapk_id,
                               agent_id=row.agent_id, details={"token_id": row.id})
    if row is not None:
        await announce(runtime.bus, CapabilityTokenRevoked(org_id=org_id, jti=row.id, exp=row.expires_at.timestamp()))
    return row


# --- verification ------------------------------------------------------------------------
class CapabilityVerifier:
    """Verifies tokens against the key set; caches verified claims by token string."""

    CACHE_SIZE = 10_000

    def __init__(self, runtime: Runtime, revocations: RevocationList):
        self.runtime = runtime
        self.revocations = revocations
        self._cache: OrderedDict[str, CapClaims] = OrderedDict()

    def verify(self, token: str, now: float | None = None) -> CapClaims | TokenProblem:
        now = time.time() if now is None else now
        claims = self._cache.get(token)
        if claims is None:
            s = self.runtime.settings
            try:
                raw = verify(
                    self.runtime.keys, token, CAPABILITY_TYP, issuer=s.issuer, audience=CAPABILITY_AUDIENCE,
                    required=REQUIRED_CLAIMS,
                )
                claims = _claims(raw, str(jwt.get_unverified_header(token)["kid"]))
                _check_shapes(claims)
            except TokenInvalid as exc:
                code = "capability_token_expired" if exc.reason == "expired" else "capability_token_invalid"
                return TokenProblem(code, f"Capability token rejected: {exc}.")
            except (KeyError, TypeError, ValueError):
                return TokenProblem("capability_token_invalid", "Capability token has malformed claims.")
            self._cache[token] = claims
            if len(self._cache) > self.CACHE_SIZE:
                self._cache.popitem(last=False)
        elif self.runtime.keys.public_key(claims.kid) is None:
            # Its signing key was retired since we cached it.
            self._cache.pop(token, None)
            return TokenProblem("capability_token_invalid", "Capability token rejected: unknown signing key.")
        # Time checks again on every use: a cached token still expires.
        if now > claims.exp + LEEWAY_SECONDS:
            self._cache.pop(token, None)
            return TokenProblem("capability_token_expired", "Capability token has expired.")
        if now < claims.nbf - LEEWAY_SECONDS:
            return TokenProblem("capability_token_invalid", "Capability token is not yet valid.")
        if claims.jti in self.revocations:
            return TokenProblem("capability_token_revoked", "Capability token has been revoked.")
        return claims


def _check_shapes(c: CapClaims) -> None:
    if not all(isinstance(x, str) for x in c.capabilities) or not c.capabilities:
        raise ValueError("capabilities")
    if not isinstance(c.constraints, dict):
        raise ValueError("constraints")


def check_action(
    claims: CapClaims,
    *,
    org_id: str,
    uapk_id: str,
    agent_id: str,
    manifest_hash: str,
    capability: str,
    amount: float | None,
    currency: str | None,
) -> TokenProblem | None:
    """The token must be for this org, UAPK and agent, issued against the manifest now active,
    and must include the capability (and satisfy its constraints)."""
    if claims.org_id != org_id:
        # Do not reveal anything about other organizations.
        return TokenProblem("capability_token_invalid", "Capability token is not valid for this organization.")
    if claims.uapk_id != uapk_id or claims.agent_id != agent_id:
        return TokenProblem("token_agent_mismatch", "Capability token was issued to another agent.",
                            {"token_uapk_id": claims.uapk_id, "token_agent_id": claims.agent_id})
    if claims.manifest_hash != manifest_hash:
        return TokenProblem("capability_token_revoked", "Capability token was issued for another manifest version.")
    if not matches_any(claims.capabilities, capability):
        return TokenProblem("capability_not_in_token", f"Capability '{capability}' is not in the token.",
                            {"capability": capability, "token_capabilities": list(claims.capabilities)})
    max_amount = claims.constraints.get("max_amount")
    # 0 <= amount <= max_amount, written so that NaN fails too: a negative amount is not "less"
    # (requests refuse it with 400; this check does not rely on that).
    if max_amount is not None and (amount is None or not 0 <= amount <= max_amount):
        return TokenProblem("capability_not_in_token", "Amount exceeds the token's max_amount constraint.",
                            {"constraint": "max_amount", "limit": max_amount})
    currencies = claims.constraints.get("currencies")
    if currencies is not None and currency not in currencies:
        return TokenProblem("capability_not_in_token", "Currency is not allowed by the token.",
                            {"constraint": "currencies", "allowed": currencies})
    return None


def constraints_size_ok(constraints: dict[str, Any]) -> bool:
    return len(canonical_json(constraints)) <= 4096


class TokenService:
    """Per-process state: the verifier, the revocation list and its catch-up task."""

    POLL_SECONDS = 2.0

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.revocations = RevocationList(runtime)
        self.verifier = CapabilityVerifier(runtime, self.revocations)
        self._task: asyncio.Task[None] | None = None
        runtime.bus.subscribe(self.revocations.on_change)

    async def start(self) -> None:
        await self.revocations.refresh(self.runtime)
        self._task = every(self.POLL_SECONDS, self._catch_up, name="bastion-captoken-revocations", log=log,
                           what="revocation catch-up")

    async def _catch_up(self) -> None:
        self.runtime.keys.reload_if_changed()  # bastion keys rotate/retire by another process
        await self.revocations.refresh(self.runtime)  # database down: keep the list we have

    async def stop(self) -> None:
        await cancel(self._task)
