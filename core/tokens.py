"""Signed JWTs (EdDSA / Ed25519) with an explicit type.

Every token Bastion issues carries a ``typ`` header naming what it is, so that a token of one
kind is never accepted where another is expected (a session token is not an override token).
Verification pins ``alg`` to EdDSA, checks ``typ``, ``iss``, ``aud``, ``exp``/``nbf`` and the
required claims, and resolves ``kid`` only by dictionary lookup (a hostile ``kid`` is just an
unknown one).
"""
from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any, Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

if TYPE_CHECKING:
    from jwt.types import Options

SESSION_TYP = "bastion-session+jwt"
OVERRIDE_TYP = "bastion-override+jwt"
CAPABILITY_TYP = "bastion-capability+jwt"

LEEWAY_SECONDS = 30


class Keys(Protocol):
    @property
    def signing_key(self) -> Any: ...

    def public_key(self, kid: str) -> Ed25519PublicKey | None: ...


class TokenInvalid(Exception):
    """The token cannot be trusted. ``reason`` is one of: invalid, expired."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def sign(keys: Keys, typ: str, claims: dict[str, Any], ttl_seconds: int, now: float | None = None) -> str:
    now_i = int(time.time() if now is None else now)
    body = {"iat": now_i, "nbf": now_i, "exp": now_i + ttl_seconds, "jti": uuid.uuid4().hex, **claims}
    key = keys.signing_key
    private: Ed25519PrivateKey = key.private
    return jwt.encode(body, private, algorithm="EdDSA", headers={"typ": typ, "kid": key.kid})


def verify(
    keys: Keys,
    token: str,
    typ: str,
    *,
    issuer: str,
    audience: str,
    required: tuple[str, ...] = ("exp", "iat", "nbf", "jti", "iss", "aud", "sub"),
) -> dict[str, Any]:
    if not isinstance(token, str) or len(token) > 8192:
        raise TokenInvalid("invalid", "token is not a string of sane length")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise TokenInvalid("invalid", "malformed token") from None
    if header.get("alg") != "EdDSA":
        raise TokenInvalid("invalid", "algorithm must be EdDSA")
    if header.get("typ") != typ:
        raise TokenInvalid("invalid", "wrong token type")
    kid = header.get("kid")
    public = keys.public_key(kid) if isinstance(kid, str) and len(kid) <= 64 else None
    if public is None:
        raise TokenInvalid("invalid", "unknown signing key")
    options: Options = {"require": list(required)}
    try:
        return jwt.decode(
            token,
            public,
            algorithms=["EdDSA"],
            audience=audience,
            issuer=issuer,
            leeway=LEEWAY_SECONDS,
            options=options,
        )
    except jwt.ExpiredSignatureError:
        raise TokenInvalid("expired", "token has expired") from None
    except jwt.ImmatureSignatureError:
        raise TokenInvalid("invalid", "token is not yet valid") from None
    except jwt.PyJWTError as exc:
        raise TokenInvalid("invalid", f"token rejected: {type(exc).__name__}") from None
