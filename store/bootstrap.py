"""Idempotent first-run set-up: an organization, its owner and an owner API key.

Audited like the API's changes: each thing it creates is an event (``org.created``,
``member.added``, ``api_key.created``, ``details.via = "bootstrap"``, actor
:data:`ACTOR`) appended to the organization's chain inside the set-up's own transaction, so
nothing is created unrecorded (the CLI has no audit writer; the head row serializes it with a
running server's)."""
from __future__ import annotations

import asyncio
from typing import Any

from store import accounts
from store import audit as audit_repo
from store.api_keys import display_prefix, generate_key, hash_key
from store.passwords import hash_password, verify_password
from store.runtime import Runtime

ACTOR = "cli:bootstrap"


class BootstrapConflict(Exception):
    pass


async def bootstrap(
    runtime: Runtime,
    slug: str,
    name: str,
    email: str,
    password: str,
    *,
    issue_key: str = "always",
) -> accounts.BootstrapResult:
    """Create (or find) the org and the owner, and issue an owner-role key.

    Running it again with the same slug and email creates no new org or user and returns the
    same ids with a new key. An existing user must be given their current password.

    ``issue_key="if_created"`` (start-up from BASTION_BOOTSTRAP_*) issues a key only when the
    org or the user was created by this call, so restarts do not pile up keys; the result's
    ``api_key`` is then ``""`` when nothing was created."""
    email = email.strip().lower()
    pw_hash = await asyncio.to_thread(hash_password, password)
    for attempt in range(3):
        try:
            return await _bootstrap_once(runtime, slug, name, email, password, pw_hash, issue_key)
        except accounts.DuplicateError:
            # Another process (a second replica starting) created the org or user first:
            # the next attempt finds theirs.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


async def _bootstrap_once(
    runtime: Runtime, slug: str, name: str, email: str, password: str, pw_hash: str, issue_key: str
) -> accounts.BootstrapResult:
    created = False
    changes: list[tuple[str, dict[str, Any]]] = []
    async with runtime.sessions() as session, session.begin():
        org = await accounts.get_org_by_slug(session, slug)
        if org is None:
            org = await accounts.create_org(session, name, slug)
            created = True
            changes.append(("org.created", {"slug": org.slug, "name": org.name}))
        user = await accounts.get_user_by_email(session, email)
        if user is None:
            user = await accounts.create_user(session, email, pw_hash)
            created = True
        elif not await asyncio.to_thread(verify_password, password, user.password_hash):
            raise BootstrapConflict(f"user {email} exists with another password")
        membership = await accounts.get_membership(session, org.id, user.id)
        if membership is None:
            m = await accounts.add_member(session, org.id, user.id, "owner")
            created = True
            changes.append(("member.added", {"user_id": user.id, "email": user.email, "role": m.role}))
        elif membership.role != "owner":
            raise BootstrapConflict(f"user {email} is a {membership.role} of {slug}, not its owner")
        secret = ""
        if issue_key == "always" or created:
            secret = generate_key()
            key = await accounts.create_api_key(
                session, org.id, "bootstrap", display_prefix(secret), hash_key(runtime.pepper, secret), "owner", None,
                email,
            )
            changes.append(("api_key.created", {"key_id": key.id, "name": key.name, "role": key.role,
                                                "uapk_ids": key.uapk_ids}))
        if changes:
            s = runtime.settings
            events = [audit_repo.change_event(org.id, kind, ACTOR, dict(details, via="bootstrap"))
                      for kind, details in changes]
            await audit_repo.append_events(session, org.id, events, keys=runtime.keys, issuer=s.issuer,
                                           checkpoint_every=s.audit_checkpoint_every)
    return accounts.BootstrapResult(org_id=org.id, user_id=user.id, api_key=secret)
