"""Console sessions without a browser: idle and absolute timeouts, sign-out (in-process and in
Redis), the CSRF check, the cookie's type, and how agent text is shown."""
from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from console import sessions
from console.render import has_hidden, visible
from core.errors import AuthenticationRequired, PermissionDenied
from core.settings import Settings
from httpkit.auth import Authenticator
from store.keystore import KeyStore
from store.runtime import make_redis

IDLE, ABSOLUTE = 600, 3600


def _runtime(tmp_path: Path, redis: Any = None) -> Any:
    settings = Settings(console_idle_timeout_seconds=IDLE, console_absolute_timeout_seconds=ABSOLUTE)
    return SimpleNamespace(settings=settings, keys=KeyStore.load_or_create(tmp_path / "keys.json"), redis=redis)


def _cookie_at(runtime: Any, session: sessions.ConsoleSession, at: float, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The cookie as issued at time ``at``, presented now (a connection holding it)."""
    with monkeypatch.context() as m:
        m.setattr(sessions.time, "time", lambda: at)
        cookie = sessions.session_cookie(runtime, session, secure=True)
    return SimpleNamespace(cookies={sessions.COOKIE: cookie.value}), cookie


async def test_a_fresh_cookie_is_a_valid_session_with_the_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = _runtime(tmp_path)
    session = sessions.new_session("u1", "a@example.com")
    conn, cookie = _cookie_at(runtime, session, time.time(), monkeypatch)
    assert cookie.httponly and cookie.secure and cookie.samesite == "strict" and cookie.path == "/console"
    assert cookie.max_age == IDLE
    assert await sessions.read_session(runtime, conn) == session


async def test_an_idle_session_expires(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = _runtime(tmp_path)
    now = time.time()
    session = sessions.new_session("u1", "a@example.com")
    recent, _ = _cookie_at(runtime, session, now - IDLE + 60, monkeypatch)  # last request 9 minutes ago
    assert await sessions.read_session(runtime, recent) == session
    idle, _ = _cookie_at(runtime, session, now - IDLE - 60, monkeypatch)  # 11 minutes ago (beyond the leeway)
    assert await sessions.read_session(runtime, idle) is None


async def test_an_active_session_still_ends_at_the_absolute_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = _runtime(tmp_path)
    now = int(time.time())
    almost = sessions.ConsoleSession("u1", "a@example.com", "sid-1", "csrf", signed_in_at=now - ABSOLUTE + 100)
    conn, cookie = _cookie_at(runtime, almost, now, monkeypatch)
    assert cookie.max_age <= 100  # re-issued on activity, but never past the absolute deadline
    assert await sessions.read_session(runtime, conn) == almost
    # Issued a moment ago, but the sign-in is older than the absolute timeout.
    over = sessions.ConsoleSession("u1", "a@example.com", "sid-2", "csrf", signed_in_at=now - ABSOLUTE - 1)
    conn, _ = _cookie_at(runtime, over, now - 20, monkeypatch)
    assert await sessions.read_session(runtime, conn) is None


async def test_sign_out_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = _runtime(tmp_path)
    a, b = sessions.new_session("u1", "a@example.com"), sessions.new_session("u1", "a@example.com")
    conn_a, _ = _cookie_at(runtime, a, time.time(), monkeypatch)
    conn_b, _ = _cookie_at(runtime, b, time.time(), monkeypatch)
    await sessions.end_session(runtime, a)
    assert await sessions.read_session(runtime, conn_a) is None
    assert await sessions.read_session(runtime, conn_b) == b  # the user's other session is untouched


async def test_sign_out_in_redis_is_seen_by_every_process(tmp_path: Path, redis_url: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    redis = make_redis(redis_url, 2.0)
    try:
        runtime, other_process = _runtime(tmp_path, redis), _runtime(tmp_path, redis)
        session = sessions.new_session("u1", "a@example.com")
        conn, _ = _cookie_at(runtime, session, time.time(), monkeypatch)
        assert await sessions.read_session(other_process, conn) == session
        await sessions.end_session(runtime, session)
        assert await sessions.read_session(other_process, conn) is None
        ttl = await redis.ttl("bastion:console:ended:" + session.sid)
        assert 0 < ttl <= ABSOLUTE  # forgotten once the session would have expired anyway
    finally:
        await redis.aclose()


async def test_console_cookies_and_api_session_tokens_do_not_mix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = _runtime(tmp_path)
    session = sessions.new_session("u1", "a@example.com")
    _conn, cookie = _cookie_at(runtime, session, time.time(), monkeypatch)
    api = Authenticator.__new__(Authenticator)
    api.runtime = runtime
    with pytest.raises(AuthenticationRequired):
        api.session(cookie.value)
    from core.tokens import SESSION_TYP, sign

    api_token = sign(runtime.keys, SESSION_TYP, {"iss": "bastion", "aud": "bastion-api", "sub": "u1",
                                                 "email": "a@example.com"}, 600)
    assert await sessions.read_session(runtime, SimpleNamespace(cookies={sessions.COOKIE: api_token})) is None


def test_the_csrf_check() -> None:
    sessions.check_csrf("token-1", {"csrf_token": "token-1"})
    for form in ({}, {"csrf_token": ""}, {"csrf_token": "token-2"}, {"csrf_token": ["token-1"]}, None):
        with pytest.raises(PermissionDenied):
            sessions.check_csrf("token-1", form)


def test_agent_text_is_escaped_and_hidden_characters_shown() -> None:
    shown = str(visible("<b>pay</b>\u202eevil\x1b[2J\r\tok\nline"))
    assert shown == ("&lt;b&gt;pay&lt;/b&gt;" + '<span class="cc" title="invisible or control character">U+202E</span>evil'
                     + '<span class="cc" title="invisible or control character">U+001B</span>[2J'
                     + '<span class="cc" title="invisible or control character">U+000D</span>\tok\nline')
    assert has_hidden({"note": "zero\u200bwidth"}) and not has_hidden({"note": "plain", "n": 1})
    assert "U+200B" in str(visible({"note": "zero\u200bwidth"}))


def test_a_sign_in_leads_back_only_to_a_console_page() -> None:
    from console.auth_pages import safe_next

    for good in ("/console", "/console/orgs/o-1/approvals/a-2", "/console/orgs/o-1/approvals?agent=pay-bot&age=1h"):
        assert safe_next(good) == good
    for bad in (None, "", "//evil.example/console", "https://evil.example/console", "/console\\@evil.example",
                "/consolex", "/api/v1/orgs", "/console/orgs/<x>", "/console?next=//x y", "/console" + "/a" * 300):
        assert safe_next(bad) == "/console", bad
