"""Sign in, sign out, and the console's front door (which organization)."""
from __future__ import annotations

import hmac
import secrets
from typing import Any

from litestar import Request, get, post
from litestar.response import Redirect, Response

from console import accounts
from console.render import page
from console.sessions import (
    CSRF_FIELD,
    LOGIN_COOKIE,
    check_csrf,
    cleared,
    end_session,
    is_tls,
    login_cookie,
    new_session,
    read_session,
    session_cookie,
)
from core.errors import AuthenticationRequired, PermissionDenied, RateLimited
from store.runtime import Runtime

LOGIN = "/console/login"


def runtime_of(request: Request[Any, Any, Any]) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


def _login_form(request: Request[Any, Any, Any], *, error: str | None = None, status_code: int = 200,
                email: str = "") -> Response[str]:
    # The login form's CSRF token: a random value in a SameSite=Strict cookie and in the form
    # (no session exists yet to bind it to). Kept if the browser already has one.
    token = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(32)
    return page("login.html", status_code=status_code, error=error, email=email, csrf_token=token,
                csrf_field=CSRF_FIELD, cookies=[login_cookie(token, secure=is_tls(request))])


@get("/login")
async def login_page(request: Request[Any, Any, Any]) -> Response[Any]:
    if await read_session(runtime_of(request), request) is not None:
        return Redirect("/console")
    return _login_form(request)


@post("/login", status_code=303)
async def login(request: Request[Any, Any, Any]) -> Response[Any]:
    runtime = runtime_of(request)
    form = await request.form()
    expected = request.cookies.get(LOGIN_COOKIE) or ""
    sent = form.get(CSRF_FIELD)
    if not expected or not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise PermissionDenied("Missing or invalid CSRF token: reload the page and try again.")
    email, password = form.get("email"), form.get("password")
    if not isinstance(email, str) or not isinstance(password, str) or not email or not password:
        return _login_form(request, error="Enter your email and password.", status_code=400)
    try:
        user = await accounts.check_password(runtime, request.app.state, request.scope, email, password)
    except AuthenticationRequired:
        return _login_form(request, error="Invalid email or password.", status_code=401, email=email[:254])
    except RateLimited as exc:
        response = _login_form(request, error=exc.message, status_code=429, email=email[:254])
        response.headers.update(exc.headers)
        return response
    secure = is_tls(request)
    session = new_session(user.user_id, user.email)
    return Redirect("/console", status_code=303,
                    cookies=[session_cookie(runtime, session, secure=secure), cleared(LOGIN_COOKIE, secure=secure)])


@post("/logout", status_code=303)
async def logout(request: Request[Any, Any, Any]) -> Response[Any]:
    runtime = runtime_of(request)
    session = await read_session(runtime, request)
    if session is None:
        return Redirect(LOGIN, status_code=303)
    check_csrf(session.csrf, await request.form())
    await end_session(runtime, session)
    return Redirect(LOGIN, status_code=303, cookies=[cleared(secure=is_tls(request))])


@get("/")
async def home(request: Request[Any, Any, Any]) -> Response[Any]:
    runtime = runtime_of(request)
    session = await read_session(runtime, request)
    if session is None:
        return Redirect(LOGIN)
    orgs = await accounts.orgs_of(runtime, session.user_id)
    if len(orgs) == 1:
        return Redirect(f"/console/orgs/{orgs[0].org_id}/approvals",
                        cookies=[session_cookie(runtime, session, secure=is_tls(request))])
    return page("orgs.html", orgs=orgs, session=session, csrf_field=CSRF_FIELD,
                cookies=[session_cookie(runtime, session, secure=is_tls(request))])


ROUTES = [login_page, login, logout, home]
