"""Signed checkpoints and the coverage rule they carry.

A checkpoint is an EdDSA JWT (``typ`` :data:`CHECKPOINT_TYP`) over ``{org_id, seq, hash,
anchor}`` plus the signer's ``every`` and ``interval`` (:class:`Coverage`). An ``anchor``
checkpoint is written by retention pruning: the events up to ``seq`` were deleted on purpose
and verification starts from its hash. Checkpoints are evidence, not credentials: they do not
expire (verification ignores ``exp``). See store/audit.py for when the writer signs them.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt

from audit.event import format_ts
from core.tokens import Keys, sign

CHECKPOINT_TYP = "bastion-audit-checkpoint+jwt"
CHECKPOINT_AUDIENCE = "bastion-audit"
# Checkpoints are evidence, not credentials: they do not expire (verification ignores exp).
_CHECKPOINT_TTL = 100 * 366 * 86400
# The writer's defaults (BASTION_AUDIT_CHECKPOINT_EVERY; the sink's checkpoint_age): used by
# verification where a checkpoint does not say (checkpoints signed before the claims existed).
DEFAULT_CHECKPOINT_EVERY = 100
DEFAULT_CHECKPOINT_INTERVAL = 60.0
# An unsigned event may be this much older than the interval before verification objects: the
# writer checks once a tick (1 s) and may be busy with a batch or a database hiccup.
_MIN_TAIL_GRACE = 30.0

PublicKeyLookup = Callable[[str], Any]


@dataclass
class Coverage:
    """The writer's checkpoint rule: at least every ``every`` events and within ``interval``
    seconds of an event's creation. Signed into every checkpoint."""

    every: int = DEFAULT_CHECKPOINT_EVERY
    interval: float = DEFAULT_CHECKPOINT_INTERVAL


class CheckpointInvalid(Exception):
    pass


def sign_checkpoint(keys: Keys, issuer: str, org_id: str, seq: int, head_hash: str, anchor: bool = False,
                    every: int | None = None, interval: float | None = None) -> str:
    """``every``/``interval``: the coverage the signer keeps, signed so that an export's reader
    need not trust the file for them."""
    claims: dict[str, Any] = {
        "iss": issuer, "aud": CHECKPOINT_AUDIENCE, "sub": org_id,
        "org_id": org_id, "seq": int(seq), "hash": head_hash, "anchor": bool(anchor),
    }
    if every is not None:
        claims["every"] = int(every)
    if interval is not None:
        claims["interval"] = float(interval)
    return sign(keys, CHECKPOINT_TYP, claims, _CHECKPOINT_TTL)


def tail_allowance(interval: float) -> float:
    """Seconds an event may stay without a checkpoint before verification objects."""
    return interval + max(interval, _MIN_TAIL_GRACE)


def claim_every(claims: dict[str, Any]) -> int | None:
    v = claims.get("every")
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 1 else None


def claim_interval(claims: dict[str, Any]) -> float | None:
    v = claims.get("interval")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) and v >= 0 else None


def verify_checkpoint(token: str, public_key: PublicKeyLookup, org_id: str) -> dict[str, Any]:
    """The checkpoint's claims, or ``CheckpointInvalid``. Pins EdDSA and the typ; the key is
    found by ``kid`` only; ``exp`` is not checked (a checkpoint is a record, not a credential)."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise CheckpointInvalid("malformed") from None
    if header.get("alg") != "EdDSA" or header.get("typ") != CHECKPOINT_TYP:
        raise CheckpointInvalid("wrong algorithm or type")
    kid = header.get("kid")
    key = public_key(kid) if isinstance(kid, str) and len(kid) <= 64 else None
    if key is None:
        raise CheckpointInvalid(f"unknown signing key {kid!r}")
    try:
        claims: dict[str, Any] = jwt.decode(
            token, key, algorithms=["EdDSA"], audience=CHECKPOINT_AUDIENCE,
            options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                     "require": ["seq", "hash", "org_id"]},
        )
    except jwt.PyJWTError as exc:
        raise CheckpointInvalid(f"signature or claims rejected ({type(exc).__name__})") from None
    if claims.get("org_id") != org_id:
        raise CheckpointInvalid("signed for another organization")
    if not isinstance(claims.get("seq"), int) or not isinstance(claims.get("hash"), str):
        raise CheckpointInvalid("bad claims")
    claims["kid"] = kid
    return claims


def verify_tokens(tokens: Iterable[str], public_key: PublicKeyLookup,
                  org_id: str) -> tuple[list[dict[str, Any]], str | None]:
    """Verified claims of every checkpoint token, or a problem line for the first bad one."""
    out = []
    for token in tokens:
        try:
            out.append(verify_checkpoint(token, public_key, org_id))
        except CheckpointInvalid as exc:
            return out, f"a checkpoint is not validly signed: {exc}"
    return out, None


def checkpoint_summary(claims: dict[str, Any] | None) -> dict[str, Any] | None:
    if claims is None:
        return None
    iat = claims.get("iat")
    return {
        "seq": claims["seq"],
        "hash": claims["hash"],
        "anchor": bool(claims.get("anchor")),
        "kid": claims.get("kid"),
        "signed_at": format_ts(datetime.fromtimestamp(iat, UTC)) if isinstance(iat, int) else None,
    }
