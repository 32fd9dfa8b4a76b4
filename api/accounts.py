"""Login, organizations, members and API keys."""
from __future__ import annotations

from typing import Any, Literal

import msgspec
from litestar import Controller, Request, delete, get, patch, post
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_202_ACCEPTED, HTTP_204_NO_CONTENT

from api.validation import EMAIL, SLUG, UAPK_ID, Checker
from audit.changes import change_context, record_change
from core.clock import isoformat, utcnow
from core.errors import AuthenticationRequired, Conflict, NotFound, PermissionDenied, RateLimited
from core.tokens import SESSION_TYP, sign
from httpkit.auth import SESSION_AUDIENCE, Caller, admit, current_principal, limit_credential, require_credentials
from httpkit.openapi import NO_BODY, declared_body
from httpkit.pagination import Page, pagination
from httpkit.ratelimit import LoginThrottle, client_address
from store import accounts
from store.api_keys import display_prefix, generate_key, hash_key
from store.bus_messages import ApiKeyRevoked
from store.models import ApiKey, Invitation, Organization, User
from store.passwords import DUMMY_HASH, Hashing, HashingBusy
from store.runtime import Runtime
from store.unit_of_work import unit_of_work

Role = Literal["owner", "admin", "approver", "policy_author", "viewer"]
KeyRole = Literal["owner", "admin", "approver", "policy_author", "viewer", "agent"]
PRIVILEGED = {"owner", "admin"}


class Strict(msgspec.Struct, forbid_unknown_fields=True):
    pass


# --- request and response types ---------------------------------------------------------
class LoginRequest(Strict):
    email: str
    password: str


class LoginResponse(msgspec.Struct):
    access_token: str
    token_type: str
    expires_in: int


class OrgCreate(Strict):
    name: str
    slug: str


class OrgOut(msgspec.Struct):
    org_id: str
    name: str
    slug: str
    created_at: str
    role: str | None = None


class OrgList(msgspec.Struct):
    items: list[OrgOut]
    total: int


class MemberCreate(Strict):
    email: str
    role: Role
    password: str | None = None


class MemberPatch(Strict):
    role: Role


class MemberOut(msgspec.Struct):
    user_id: str
    email: str
    role: str
    created_at: str


class MemberList(msgspec.Struct):
    items: list[MemberOut]
    total: int


class InvitationOut(msgspec.Struct):
    """An invitation as the inviting organization sees it. Whether an account with this email
    exists is not part of it (nor of the answer to the invite)."""

    invitation_id: str
    org_id: str
    email: str
    role: str
    status: str  # pending | accepted | declined | revoked | expired
    invited_by: str
    created_at: str
    expires_at: str
    decided_at: str | None = None


class InvitationList(msgspec.Struct):
    items: list[InvitationOut]
    total: int


class MyInvitationOut(msgspec.Struct):
    """A pending invitation as its invitee sees it."""

    invitation_id: str
    org_id: str
    org_name: str
    org_slug: str
    role: str
    invited_by: str
    created_at: str
    expires_at: str


class MyInvitationList(msgspec.Struct):
    items: list[MyInvitationOut]
    total: int


class ApiKeyCreate(Strict):
    name: str
    role: KeyRole
    uapk_ids: list[str] | None = None


class ApiKeyOut(msgspec.Struct):
    id: str
    name: str
    prefix: str
    role: str
    uapk_ids: list[str] | None
    created_at: str
    revoked_at: str | None = None
    created_by: str | None = None


class ApiKeyCreated(msgspec.Struct):
    id: str
    key: str
    name: str
    prefix: str
    role: str
    uapk_ids: list[str] | None
    created_at: str


class ApiKeyList(msgspec.Struct):
    items: list[ApiKeyOut]
    total: int


def _runtime(request: Request[Any, Any, Any]) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


def _key_out(k: ApiKey) -> ApiKeyOut:
    return ApiKeyOut(
        id=k.id, name=k.name, prefix=k.prefix, role=k.role, uapk_ids=k.uapk_ids,
        created_at=isoformat(k.created_at) or "", revoked_at=isoformat(k.revoked_at), created_by=k.created_by,
    )


def _hashing(request: Request[Any, Any, Any]) -> Hashing:
    """This process's password-hashing slots (BASTION_LOGIN_HASH_CONCURRENCY), made on first use
    inside the app's event loop."""
    state = request.app.state
    hashing = getattr(state, "password_hashing", None)
    if hashing is None:
        hashing = state.password_hashing = Hashing(_runtime(request).settings.login_hash_concurrency)
    return hashing  # type: ignore[no-any-return]


def _throttled(request: Request[Any, Any, Any], headers: dict[str, str], retry_after: int) -> None:
    # Added to the response (success or error) by httpkit.context.RequestContext.
    request.scope.setdefault("state", {})["response_headers"] = headers
    if retry_after:
        raise RateLimited(f"Too many failed logins. Retry after {retry_after} s.", retry_after)


def _invitation_out(inv: Invitation) -> InvitationOut:
    return InvitationOut(
        invitation_id=inv.id, org_id=inv.org_id, email=inv.email, role=inv.role,
        status=accounts.invitation_status(inv, utcnow()), invited_by=inv.invited_by,
        created_at=isoformat(inv.created_at) or "", expires_at=isoformat(inv.expires_at) or "",
        decided_at=isoformat(inv.decided_at),
    )


def _check_password(c: Checker, field: str, password: str | None) -> None:
    if password is None:
        c.add(field, "Field is required.")
    elif not 8 <= len(password) <= 1024:
        c.add(field, "Must be between 8 and 1024 characters.")


# --- auth ------------------------------------------------------------------------------
@post(
    "/api/v1/auth/login",
    tags=["auth"],
    status_code=HTTP_200_OK,
    summary="Exchange email and password for a session token",
    security=[{}],
    opt={"errors": [400, 401, 413, 429, 503]},
)
async def login(request: Request[Any, Any, Any], data: LoginRequest) -> LoginResponse:
    runtime = _runtime(request)
    email = data.email.strip().lower()[:254]
    # Failed attempts are limited per client address, per email and globally (LoginThrottle);
    # the check runs again inside the hashing slot, so a queue of guesses that all passed the
    # first check cannot overshoot by more than the slots.
    throttle = LoginThrottle(request.app.state.rate_limiter, client_address(request.scope), email)
    _throttled(request, *await throttle.admit_attempt())
    async with runtime.sessions() as session:
        user = await accounts.get_user_by_email(session, email)
    try:
        async with _hashing(request).slot():
            _throttled(request, *await throttle.check())
            # Hash even for unknown emails so timing does not reveal which emails exist.
            ok = await Hashing.verify(data.password[:1024], user.password_hash if user else DUMMY_HASH)
            if user is None or not ok:
                await throttle.failed()
                raise AuthenticationRequired("Invalid email or password.")
    except HashingBusy:
        raise RateLimited("Too many logins in progress. Retry after 1 s.", 1) from None
    ttl = runtime.settings.session_ttl_seconds
    token = sign(
        runtime.keys, SESSION_TYP,
        {"iss": runtime.settings.issuer, "aud": SESSION_AUDIENCE, "sub": user.id, "email": user.email},
        ttl,
    )
    return LoginResponse(access_token=token, token_type="bearer", expires_in=ttl)


# --- organizations ---------------------------------------------------------------------
class OrgController(Controller):
    guards = [require_credentials]
    path = "/api/v1/orgs"
    tags = ["organizations"]

    @post(
        "/", status_code=HTTP_201_CREATED, summary="Create an organization; the caller becomes its owner",
        opt={"errors": [400, 401, 403, 409, 413, 429, 503]},
    )
    async def create(self, request: Request[Any, Any, Any], data: OrgCreate) -> OrgOut:
        principal = await current_principal(request)
        if principal.kind != "user":
            raise PermissionDenied("Organizations are created by users (session token), not API keys.")
        c = Checker()
        c.text("name", data.name)
        c.pattern("slug", data.slug, SLUG, "Must be 2-63 lowercase letters, digits and hyphens, starting with a letter or digit.")
        c.check()
        await limit_credential(request, principal)
        runtime = _runtime(request)
        async with runtime.sessions() as session, session.begin():
            try:
                org = await accounts.create_org(session, data.name.strip(), data.slug)
            except accounts.DuplicateError:
                raise Conflict(f"An organization with slug '{data.slug}' already exists.") from None
            await accounts.add_member(session, org.id, principal.user_id or "", "owner")
            await record_change(request, principal, "org.created", org_id=org.id, details={"slug": org.slug, "name": org.name})
        return OrgOut(org_id=org.id, name=org.name, slug=org.slug, created_at=isoformat(org.created_at) or "", role="owner")

    @get("/", summary="The caller's organizations", opt={"errors": [400, 401, 429, 503]}, dependencies=pagination())
    async def list_orgs(self, request: Request[Any, Any, Any], page: Page) -> OrgList:
        principal = await current_principal(request)
        await limit_credential(request, principal)
        runtime = _runtime(request)
        async with runtime.sessions() as session:
            if principal.kind == "api_key":
                org = await accounts.get_org(session, principal.org_id or "")
                rows = [(org, principal.role or "")] if org else []
                total = len(rows)
                rows = rows[page.offset : page.offset + page.limit]
            else:
                rows, total = await accounts.orgs_of_user(session, principal.user_id or "", page.limit, page.offset)
        return OrgList(
            items=[OrgOut(org_id=o.id, name=o.name, slug=o.slug, created_at=isoformat(o.created_at) or "", role=r) for o, r in rows],
            total=total,
        )

    @get("/{org_id:str}", summary="One organization")
    async def get_org(self, request: Request[Any, Any, Any], org_id: str) -> OrgOut:
        caller = await admit(request, org_id, "orgs", "read")
        async with _runtime(request).sessions() as session:
            org = await accounts.get_org(session, org_id)
        if org is None:
            raise NotFound()
        return OrgOut(org_id=org.id, name=org.name, slug=org.slug, created_at=isoformat(org.created_at) or "", role=caller.role)


# --- members ---------------------------------------------------------------------------
def _require_manage(caller: Caller, *roles: str) -> None:
    """Admins manage members; only owners may grant, change or remove owner and admin roles."""
    from policies.rbac import default_roles

    if any(r in PRIVILEGED for r in roles) and not default_roles().allows(caller.role, "users", "manage_admins"):
        raise PermissionDenied("Only an owner may grant, change or remove the owner and admin roles.")


class MemberController(Controller):
    guards = [require_credentials]
    path = "/api/v1/orgs/{org_id:str}/users"
    tags = ["members"]

    @post(
        "/", status_code=HTTP_202_ACCEPTED,
        summary="Invite a user by email; they become a member when they accept",
    )
    async def add(self, request: Request[Any, Any, Any], org_id: str, data: MemberCreate) -> InvitationOut:
        """Always an invitation, and the same answer whether or not an account with this email
        exists: an organization can neither learn which emails have accounts nor add anyone
        without their consent. With ``password`` and no account yet, the account is created
        with it (so the person can sign in and accept); for an existing account it is ignored."""
        caller = await admit(request, org_id, "users", "manage")
        email = data.email.strip().lower()
        c = Checker()
        c.pattern("email", email, EMAIL, "Must be a valid email address.")
        if data.password is not None:
            _check_password(c, "password", data.password)
        c.check()
        _require_manage(caller, data.role)
        runtime = _runtime(request)
        # Hash whenever a password is given, before looking the email up: how long the call
        # takes must not say whether the account exists either.
        pw_hash = None
        if data.password:
            try:
                async with _hashing(request).slot():
                    pw_hash = await Hashing.hash(data.password)
            except HashingBusy:
                raise RateLimited("Too many password hashes in progress. Retry after 1 s.", 1) from None
        async with runtime.sessions() as session, session.begin():
            user = await accounts.get_user_by_email(session, email)
            if user is None and pw_hash is not None:
                try:
                    user = await accounts.create_user(session, email, pw_hash)
                except accounts.DuplicateError:
                    raise Conflict("A user with this email was created concurrently; retry.") from None
            elif user is not None and await accounts.get_membership(session, org_id, user.id) is not None:
                raise Conflict(f"{email} is already a member of this organization.")
            try:
                inv = await accounts.create_invitation(session, org_id, email, data.role, caller.actor)
            except accounts.DuplicateError:
                raise Conflict(f"{email} already has a pending invitation to this organization.") from None
            await record_change(request, caller, "member.invited", details={"invitation_id": inv.id, "email": email, "role": inv.role})
        return _invitation_out(inv)

    @get("/", summary="List members", dependencies=pagination())
    async def list_members(self, request: Request[Any, Any, Any], org_id: str, page: Page) -> MemberList:
        await admit(request, org_id, "users", "read")
        async with _runtime(request).sessions() as session:
            rows, total = await accounts.list_members(session, org_id, page.limit, page.offset)
        return MemberList(
            items=[MemberOut(user_id=u.id, email=u.email, role=m.role, created_at=isoformat(m.created_at) or "") for u, m in rows],
            total=total,
        )

    @patch("/{user_id:str}", summary="Change a member's role")
    async def change_role(self, request: Request[Any, Any, Any], org_id: str, user_id: str, data: MemberPatch) -> MemberOut:
        caller = await admit(request, org_id, "users", "manage")
        async with _runtime(request).sessions() as session, session.begin():
            await accounts.lock_org(session, org_id)
            m = await accounts.get_membership(session, org_id, user_id)
            if m is None:
                raise NotFound()
            _require_manage(caller, m.role, data.role)
            if m.role == "owner" and data.role != "owner" and await accounts.count_owners(session, org_id) <= 1:
                raise Conflict("The last owner cannot be demoted.")
            await record_change(request, caller, "member.role_changed", details={"user_id": user_id, "from_role": m.role, "role": data.role})
            m.role = data.role
            user = await session.get(accounts.User, user_id)
        assert user is not None
        return MemberOut(user_id=user.id, email=user.email, role=m.role, created_at=isoformat(m.created_at) or "")

    @delete("/{user_id:str}", status_code=HTTP_204_NO_CONTENT, summary="Remove a member")
    async def remove(self, request: Request[Any, Any, Any], org_id: str, user_id: str) -> None:
        caller = await admit(request, org_id, "users", "manage")
        async with _runtime(request).sessions() as session, session.begin():
            await accounts.lock_org(session, org_id)
            m = await accounts.get_membership(session, org_id, user_id)
            if m is None:
                raise NotFound()
            _require_manage(caller, m.role)
            if m.role == "owner" and await accounts.count_owners(session, org_id) <= 1:
                raise Conflict("The last owner cannot be removed.")
            await record_change(request, caller, "member.removed", details={"user_id": user_id, "role": m.role})
            await session.delete(m)


# --- invitations -----------------------------------------------------------------------
class OrgInvitationController(Controller):
    guards = [require_credentials]
    path = "/api/v1/orgs/{org_id:str}/invitations"
    tags = ["members"]

    @get("/", summary="The organization's invitations (pending, accepted, declined, revoked, expired)", dependencies=pagination())
    async def list_invitations(self, request: Request[Any, Any, Any], org_id: str, page: Page) -> InvitationList:
        await admit(request, org_id, "users", "read")
        async with _runtime(request).sessions() as session:
            rows, total = await accounts.list_org_invitations(session, org_id, page.limit, page.offset)
        return InvitationList(items=[_invitation_out(i) for i in rows], total=total)

    @delete("/{invitation_id:str}", status_code=HTTP_204_NO_CONTENT, summary="Revoke a pending invitation")
    async def revoke_invitation(self, request: Request[Any, Any, Any], org_id: str, invitation_id: str) -> None:
        caller = await admit(request, org_id, "users", "manage")
        async with _runtime(request).sessions() as session, session.begin():
            inv = await accounts.get_org_invitation(session, org_id, invitation_id[:64])
            if inv is None:
                raise NotFound()
            _require_manage(caller, inv.role)
            status = accounts.invitation_status(inv, utcnow())
            if status != "pending" or not await accounts.close_invitation(session, inv, "revoked", utcnow()):
                raise Conflict(f"The invitation is {accounts.invitation_status(inv, utcnow())}, not pending.")
            await record_change(request, caller, "invitation.revoked", details={"invitation_id": inv.id, "email": inv.email, "role": inv.role})


class MyInvitationController(Controller):
    """The signed-in user's own invitations (session token only: API keys belong to an org)."""

    guards = [require_credentials]
    path = "/api/v1/invitations"
    tags = ["members"]

    @get("/", summary="My pending invitations", security=[{"Session": []}], dependencies=pagination())
    async def mine(self, request: Request[Any, Any, Any], page: Page) -> MyInvitationList:
        user = await _invitee(request)
        async with _runtime(request).sessions() as session:
            rows, total = await accounts.invitations_for(session, user.email, utcnow(), page.limit, page.offset)
        return MyInvitationList(items=[_my_invitation(i, o) for i, o in rows], total=total)

    @post(
        "/{invitation_id:str}/accept", status_code=HTTP_200_OK, security=[{"Session": []}],
        summary="Accept an invitation: become a member with the invited role", opt=NO_BODY,
    )
    async def accept(self, request: Request[Any, Any, Any], invitation_id: str) -> OrgOut:
        user = await _invitee(request)
        await declared_body(request)
        principal = await current_principal(request)
        async with _runtime(request).sessions() as session, session.begin():
            inv = await _pending_for(session, invitation_id, user)
            if await accounts.get_membership(session, inv.org_id, user.id) is not None:
                raise Conflict("You are already a member of this organization.")
            if not await accounts.close_invitation(session, inv, "accepted", utcnow()):
                raise Conflict("The invitation was decided or revoked meanwhile.")
            m = await accounts.add_member(session, inv.org_id, user.id, inv.role)
            await record_change(request, principal, "member.added", org_id=inv.org_id,
                                details={"user_id": user.id, "email": user.email, "role": m.role, "invitation_id": inv.id})
            org = await accounts.get_org(session, inv.org_id)
        assert org is not None
        return OrgOut(org_id=org.id, name=org.name, slug=org.slug, created_at=isoformat(org.created_at) or "", role=m.role)

    @post(
        "/{invitation_id:str}/decline", status_code=HTTP_204_NO_CONTENT, security=[{"Session": []}],
        summary="Decline an invitation", opt=NO_BODY,
    )
    async def decline(self, request: Request[Any, Any, Any], invitation_id: str) -> None:
        user = await _invitee(request)
        await declared_body(request)
        principal = await current_principal(request)
        async with _runtime(request).sessions() as session, session.begin():
            inv = await _pending_for(session, invitation_id, user)
            if not await accounts.close_invitation(session, inv, "declined", utcnow()):
                raise Conflict("The invitation was decided or revoked meanwhile.")
            await record_change(request, principal, "invitation.declined", org_id=inv.org_id,
                                details={"invitation_id": inv.id, "email": user.email, "role": inv.role})


async def _invitee(request: Request[Any, Any, Any]) -> User:
    principal = await current_principal(request)
    if principal.kind != "user":
        raise PermissionDenied("Invitations are for users (session token), not API keys.")
    await limit_credential(request, principal)
    async with _runtime(request).sessions() as session:
        user = await session.get(User, principal.user_id or "")
    if user is None:
        raise AuthenticationRequired("The session's user no longer exists.")
    return user


async def _pending_for(session: Any, invitation_id: str, user: User) -> Invitation:
    """The invitation, if addressed to ``user`` (404 otherwise, as if it did not exist) and
    still pending (409 naming its state otherwise)."""
    inv = await accounts.get_invitation_for(session, invitation_id[:64], user.email)
    if inv is None:
        raise NotFound()
    status = accounts.invitation_status(inv, utcnow())
    if status != "pending":
        raise Conflict(f"The invitation is {status}.")
    return inv


def _my_invitation(inv: Invitation, org: Organization) -> MyInvitationOut:
    return MyInvitationOut(
        invitation_id=inv.id, org_id=org.id, org_name=org.name, org_slug=org.slug, role=inv.role,
        invited_by=inv.invited_by, created_at=isoformat(inv.created_at) or "", expires_at=isoformat(inv.expires_at) or "",
    )


# --- API keys --------------------------------------------------------------------------
class ApiKeyController(Controller):
    guards = [require_credentials]
    path = "/api/v1/orgs/{org_id:str}/api-keys"
    tags = ["api keys"]

    @post("/", status_code=HTTP_201_CREATED, summary="Create an API key (the secret is shown once)")
    async def create(self, request: Request[Any, Any, Any], org_id: str, data: ApiKeyCreate) -> ApiKeyCreated:
        caller = await admit(request, org_id, "api_keys", "manage")
        c = Checker()
        c.text("name", data.name)
        if data.uapk_ids is not None:
            if data.role != "agent":
                c.add("uapk_ids", "Only agent keys can be restricted to UAPK ids.")
            if len(data.uapk_ids) > 1000:
                c.add("uapk_ids", "At most 1000 entries.")
            for i, u in enumerate(data.uapk_ids[:1000]):
                if not UAPK_ID.match(u):
                    c.add(f"uapk_ids.{i}", "Must be a UAPK id: lowercase letters, digits and hyphens, 2-63 characters.")
        c.check()
        _require_manage(caller, data.role)
        runtime = _runtime(request)
        secret = generate_key()
        async with runtime.sessions() as session, session.begin():
            key = await accounts.create_api_key(
                session, org_id, data.name.strip(), display_prefix(secret), hash_key(runtime.pepper, secret),
                data.role, sorted(set(data.uapk_ids)) if data.uapk_ids is not None else None, caller.actor,
            )
            await record_change(request, caller, "api_key.created", details={"key_id": key.id, "name": key.name, "role": key.role, "uapk_ids": key.uapk_ids})
        return ApiKeyCreated(
            id=key.id, key=secret, name=key.name, prefix=key.prefix, role=key.role, uapk_ids=key.uapk_ids,
            created_at=isoformat(key.created_at) or "",
        )

    @get("/", summary="List API keys (never the secrets)", dependencies=pagination())
    async def list_keys(self, request: Request[Any, Any, Any], org_id: str, page: Page) -> ApiKeyList:
        await admit(request, org_id, "api_keys", "read")
        async with _runtime(request).sessions() as session:
            rows, total = await accounts.list_api_keys(session, org_id, page.limit, page.offset)
        return ApiKeyList(items=[_key_out(k) for k in rows], total=total)

    @post(
        "/{key_id:str}/revoke", status_code=HTTP_200_OK, summary="Revoke an API key: 401 at once, everywhere",
        opt={"errors": [400, 401, 403, 404, 429, 503], **NO_BODY},
    )
    async def revoke(self, request: Request[Any, Any, Any], org_id: str, key_id: str) -> ApiKeyOut:
        # Emergency tier: revoking a key works even when the caller's standard budget is spent.
        caller = await admit(request, org_id, "api_keys", "manage", tier="emergency")
        await declared_body(request)
        async with unit_of_work(_runtime(request), org_id, audit=change_context(request, caller).hook) as uow:
            key = await accounts.revoke_api_key(uow.session, org_id, key_id)
            if key is None:
                raise NotFound()
            _require_manage(caller, key.role)
            await uow.record("api_key.revoked", {"key_id": key.id, "name": key.name, "role": key.role})
            # Every process (and gateway) evicts the key from its caches at once, this one included.
            uow.announce(ApiKeyRevoked(org_id=org_id, version=uow.version, key_id=key.id, key_hash=key.key_hash))
        return _key_out(key)


ROUTES = [login, OrgController, MemberController, OrgInvitationController, MyInvitationController, ApiKeyController]
