"""Sign in, sign out, and the console's front door (which organization)."""
from __future__ import annotations

import hmac
import re
import secrets
from typing import Annotated, Any

from litestar import Request, get, post
from litestar.params import Parameter
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
# Where a sign-in may lead back to: a console page of this server, never another site
# ("//evil.example", "/\\evil.example" and schemes are refused), with a plain query at most.
_NEXT = re.compile(r"/console(/[A-Za-z0-9._~-]+)*/?(\?[A-Za-z0-9._~%=&+-]*)?")
MAX_NEXT = 512


def safe_next(value: Any) -> str:
    """``value`` if it is a console page of this server, else the console's front door."""
    if isinstance(value, str) and len(value) <= MAX_NEXT and _NEXT.fullmatch(value):
        return value
    return "/console"


def to_login(request: Request[Any, Any, Any]) -> Response[Any]:
    """The sign-in page, coming back here afterwards (a deep link, e.g. from a notification)."""
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return Redirect(LOGIN, query_params={"next": safe_next(here)})


def runtime_of(request: Request[Any, Any, Any]) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


def _login_form(request: Request[Any, Any, Any], *, error: str | None = None, status_code: int = 200,
                email: str = "", next_page: str = "/console") -> Response[str]:
    # The login form's CSRF token: a random value in a SameSite=Strict cookie and in the form
    # (no session exists yet to bind it to). Kept if the browser already has one.
    token = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(32)
    return page("login.html", status_code=status_code, error=error, email=email, csrf_token=token, next=next_page,
                csrf_field=CSRF_FIELD, cookies=[login_cookie(token, secure=is_tls(request))])


@get("/login")
async def login_page(request: Request[Any, Any, Any],
                     next_page: Annotated[str | None, Parameter(query="next", required=False)] = None) -> Response[Any]:
    if await read_session(runtime_of(request), request) is not None:
        return Redirect(safe_next(next_page))
    return _login_form(request, next_page=safe_next(next_page))


@post("/login", status_code=303)
async def login(request: Request[Any, Any, Any]) -> Response[Any]:
    runtime = runtime_of(request)
    form = await request.form()
    expected = request.cookies.get(LOGIN_COOKIE) or ""
    sent = form.get(CSRF_FIELD)
    if not expected or not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise PermissionDenied("Missing or invalid CSRF token: reload the page and try again.")
    email, password, next_page = form.get("email"), form.get("password"), safe_next(form.get("next"))
    if not isinstance(email, str) or not isinstance(password, str) or not email or not password:
        return _login_form(request, error="Enter your email and password.", status_code=400, next_page=next_page)
    try:
        user = await accounts.check_password(runtime, request.app.state, request.scope, email, password)
    except AuthenticationRequired:
        return _login_form(request, error="Invalid email or password.", status_code=401, email=email[:254],
                           next_page=next_page)
    except RateLimited as exc:
        response = _login_form(request, error=exc.message, status_code=429, email=email[:254], next_page=next_page)
        response.headers.update(exc.headers)
        return response
    secure = is_tls(request)
    session = new_session(user.user_id, user.email)
    return Redirect(next_page, status_code=303,
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
        return to_login(request)
    orgs = await accounts.orgs_of(runtime, session.user_id)
    if len(orgs) == 1:
        return Redirect(f"/console/orgs/{orgs[0].org_id}/approvals",
                        cookies=[session_cookie(runtime, session, secure=is_tls(request))])
    return page("orgs.html", orgs=orgs, session=session, csrf_field=CSRF_FIELD,
                cookies=[session_cookie(runtime, session, secure=is_tls(request))])


ROUTES = [login_page, login, logout, home]
