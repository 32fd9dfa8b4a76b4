"""Who is signing in and where they belong: the console's glue over store.accounts.

services/ has no accounts module yet (the API's login lives in api/accounts.py, which the
console may not import), so the password check is written here with the same pieces: the
same login throttle (per address, per email, per pair and global; failures only), the same
process-wide hashing slots, and a hash even for an unknown email so that timing does not tell
which emails exist.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.errors import AuthenticationRequired, RateLimited
from httpkit.ratelimit import LoginThrottle, client_address
from policies.rbac import default_roles
from store import accounts
from store.passwords import DUMMY_HASH, Hashing, HashingBusy
from store.runtime import Runtime

MAX_EMAIL = 254
MAX_PASSWORD = 1024


@dataclass(frozen=True, slots=True)
class SignedInUser:
    user_id: str
    email: str


@dataclass(frozen=True, slots=True)
class OrgChoice:
    org_id: str
    name: str
    slug: str
    role: str


def _hashing(app_state: Any, runtime: Runtime) -> Hashing:
    # The attribute the API's login uses: one set of hashing slots per process, whichever
    # door the password came through.
    hashing = getattr(app_state, "password_hashing", None)
    if hashing is None:
        hashing = app_state.password_hashing = Hashing(runtime.settings.login_hash_concurrency)
    return hashing


def _refuse_if_throttled(retry_after: int) -> None:
    if retry_after:
        raise RateLimited(f"Too many failed sign-ins. Retry after {retry_after} s.", retry_after)


async def check_password(runtime: Runtime, app_state: Any, scope: Any, email: str, password: str) -> SignedInUser:
    """The user whose password this is; ``AuthenticationRequired`` or ``RateLimited`` otherwise."""
    email = email.strip().lower()[:MAX_EMAIL]
    throttle = LoginThrottle(app_state.rate_limiter, client_address(scope), email)
    _refuse_if_throttled((await throttle.admit_attempt())[1])
    async with runtime.sessions() as session:
        user = await accounts.get_user_by_email(session, email) if email else None
    try:
        async with _hashing(app_state, runtime).slot():
            _refuse_if_throttled((await throttle.check())[1])
            ok = await Hashing.verify(password[:MAX_PASSWORD], user.password_hash if user else DUMMY_HASH)
            if user is None or not ok:
                await throttle.failed()
                raise AuthenticationRequired("Invalid email or password.")
    except HashingBusy:
        raise RateLimited("Too many sign-ins in progress. Retry after 1 s.", 1) from None
    return SignedInUser(user_id=user.id, email=user.email)


async def orgs_of(runtime: Runtime, user_id: str, limit: int = 100) -> list[OrgChoice]:
    async with runtime.sessions() as session:
        rows, _total = await accounts.orgs_of_user(session, user_id, limit, 0)
    return [OrgChoice(org_id=org.id, name=org.name, slug=org.slug, role=role) for org, role in rows]


async def org_name(runtime: Runtime, org_id: str) -> str:
    async with runtime.sessions() as session:
        org = await accounts.get_org(session, org_id)
    return org.name if org is not None else org_id


def may(role: str, resource: str, action: str) -> bool:
    return default_roles().allows(role, resource, action)
