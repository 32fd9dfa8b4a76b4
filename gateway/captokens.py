"""Capability tokens at the gateway: verify, narrow, and the revocation list (issuing and
revoking are services/tokens.py).

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
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import jwt

from core.tasks import cancel, every
from core.tokens import CAPABILITY_TYP, LEEWAY_SECONDS, TokenInvalid, verify
from gateway.idsets import ExpiringIds
from policies.capabilities import matches_any
from services.tokens import CAPABILITY_AUDIENCE
from store import captokens as repo
from store.bus_messages import CapabilityTokenRevoked, Change, ManifestChanged
from store.runtime import Runtime

log = logging.getLogger("bastion.captokens")

REQUIRED_CLAIMS = ("iss", "aud", "sub", "org_id", "uapk_id", "manifest_hash", "capabilities", "constraints", "iat", "nbf", "exp", "jti")


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
