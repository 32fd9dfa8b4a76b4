"""Console sessions: a signed cookie, idle and absolute timeouts, CSRF tokens, sign-out.

The cookie holds an EdDSA-signed token of its own type (``bastion-console+jwt``, audience
``bastion-console``): a console cookie is never accepted as an API session token and the
reverse. It carries the user, a random session id, the sign-in time and the session's CSRF
token. Every page view re-issues it with a fresh idle deadline (``exp`` = now + idle timeout,
never past sign-in + absolute timeout), so an idle session simply expires.

Signing out records the session id as ended (in Redis, shared by every worker and replica;
in-process in the embedded mode, which is one process) until the session could have expired
anyway, so a copy of the cookie is dead too.
"""
from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie

from core.errors import PermissionDenied, ServiceUnavailable
from core.tokens import TokenInvalid, sign, verify
from store.runtime import Runtime

COOKIE = "bastion_console"
# Before sign-in: the login form's CSRF token, compared with the form field (double submit).
LOGIN_COOKIE = "bastion_console_login"
CONSOLE_TYP = "bastion-console+jwt"
CONSOLE_AUDIENCE = "bastion-console"
COOKIE_PATH = "/console"
CSRF_FIELD = "csrf_token"
_ENDED_PREFIX = "bastion:console:ended:"


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    user_id: str
    email: str
    sid: str
    csrf: str
    signed_in_at: int  # unix seconds: the absolute timeout counts from here


def _ttl(runtime: Runtime, session: ConsoleSession, now: int) -> int:
    s = runtime.settings
    return max(0, min(s.console_idle_timeout_seconds, session.signed_in_at + s.console_absolute_timeout_seconds - now))


def new_session(user_id: str, email: str) -> ConsoleSession:
    return ConsoleSession(user_id=user_id, email=email, sid=secrets.token_urlsafe(18),
                          csrf=secrets.token_urlsafe(32), signed_in_at=int(time.time()))


def session_cookie(runtime: Runtime, session: ConsoleSession, *, secure: bool) -> Cookie:
    """The cookie for ``session``, valid for the idle timeout from now (capped by the absolute one)."""
    now = int(time.time())
    ttl = _ttl(runtime, session, now)
    token = sign(runtime.keys, CONSOLE_TYP, {
        "iss": runtime.settings.issuer, "aud": CONSOLE_AUDIENCE, "sub": session.user_id, "email": session.email,
        "sid": session.sid, "csrf": session.csrf, "auth_time": session.signed_in_at,
    }, ttl, now=now)
    return _cookie(COOKIE, token, ttl, secure)


def _cookie(key: str, value: str, max_age: int, secure: bool) -> Cookie:
    # HttpOnly: no script reads it; SameSite=Strict: no other site's page sends it; Secure when
    # the console is served over TLS (uvicorn reports https, directly or from a trusted proxy).
    return Cookie(key=key, value=value, path=COOKIE_PATH, max_age=max_age, httponly=True, secure=secure,
                  samesite="strict")


def cleared(key: str = COOKIE, *, secure: bool) -> Cookie:
    return _cookie(key, "", 0, secure)


def login_cookie(value: str, *, secure: bool) -> Cookie:
    return _cookie(LOGIN_COOKIE, value, 3600, secure)


def is_tls(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    return connection.scope.get("scheme") == "https"


async def read_session(runtime: Runtime, connection: ASGIConnection[Any, Any, Any, Any]) -> ConsoleSession | None:
    """The valid, unexpired, not signed-out session of this request, else None."""
    raw = connection.cookies.get(COOKIE)
    if not raw:
        return None
    s = runtime.settings
    try:
        claims = verify(runtime.keys, raw, CONSOLE_TYP, issuer=s.issuer, audience=CONSOLE_AUDIENCE,
                        required=("exp", "iat", "nbf", "jti", "iss", "aud", "sub", "sid", "csrf", "auth_time"))
    except TokenInvalid:
        return None
    email, sid, csrf, auth_time = claims.get("email"), claims["sid"], claims["csrf"], claims["auth_time"]
    if not (isinstance(email, str) and isinstance(sid, str) and isinstance(csrf, str) and isinstance(auth_time, int)):
        return None
    session = ConsoleSession(user_id=str(claims["sub"]), email=email, sid=sid, csrf=csrf, signed_in_at=auth_time)
    # The absolute timeout is checked here too: a setting lowered after sign-in applies at once.
    if _ttl(runtime, session, int(time.time())) <= 0 or await _ended(runtime, sid):
        return None
    return session


def check_csrf(expected: str, form: Any) -> None:
    """403 unless the form carries the session's CSRF token (constant-time comparison)."""
    sent = form.get(CSRF_FIELD) if form is not None else None
    if not isinstance(sent, str) or not sent or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise PermissionDenied("Missing or invalid CSRF token: reload the page and try again.")


# --- sign-out -------------------------------------------------------------------------------
_ended_here: dict[str, float] = {}  # embedded mode (one process): sid -> when it would have expired anyway


async def end_session(runtime: Runtime, session: ConsoleSession) -> None:
    now = int(time.time())
    ttl = max(1, session.signed_in_at + runtime.settings.console_absolute_timeout_seconds - now)
    if runtime.redis is None:
        for sid, until in list(_ended_here.items()):  # forget sessions that expired by themselves
            if until < now:
                _ended_here.pop(sid, None)
        _ended_here[session.sid] = now + ttl
        return
    try:
        await runtime.redis.set(_ENDED_PREFIX + session.sid, b"1", ex=ttl)
    except Exception as exc:  # a sign-out that cannot be recorded must say so, not pretend
        raise ServiceUnavailable("Could not record the sign-out; try again.") from exc


async def _ended(runtime: Runtime, sid: str) -> bool:
    if runtime.redis is None:
        until = _ended_here.get(sid)
        return until is not None and until >= time.time()
    try:
        return bool(await runtime.redis.exists(_ENDED_PREFIX + sid))
    except Exception as exc:  # fail closed: an unknown sign-out state is not a valid session
        raise ServiceUnavailable("The session store is unreachable; retry shortly.") from exc
