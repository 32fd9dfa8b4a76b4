"""Manifests API: endpoints, transitions, roles, tenant isolation, concurrency, versions."""
from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from typing import Any

import pytest
from sqlalchemy import select

from store.bus_messages import Change, ManifestChanged
from store.models import ChangeLog, ManifestEvent
from tests.api.test_manifests_support import PAGE_DOC, act, base, doc, in_state, register
from tests.conftest import Org, assert_error, make_key


@pytest.fixture
def settings(settings_factory: Any) -> Any:
    # These tests register more manifests than the heavy tier's burst allows.
    return settings_factory(rate_limits_enabled=False)


def _jcs_simple(value: Any) -> bytes:
    """RFC 8785 for documents of ASCII strings and small integers: sorted keys, no spaces."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# --- register / get / list ---------------------------------------------------------------
async def test_register_returns_the_pages_fields(client: Any, org: Org) -> None:
    r = await client.post(base(org), json=PAGE_DOC, headers=org.headers)
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"manifest_id", "uapk_id", "status", "manifest_hash", "agent", "capabilities", "created_at"}
    uuid.UUID(body["manifest_id"])
    assert body["uapk_id"] == "customer-support-bot"
    assert body["status"] == "pending"
    assert body["agent"] == {"id": "customer-support-bot", "name": "Customer Support Bot", "version": "1.0.0"}
    assert body["capabilities"] == {"requested": ["email:send", "email:read", "crm:read", "crm:update"], "approved": []}
    assert body["created_at"].endswith("Z")
    assert body["manifest_hash"] == "sha256:" + hashlib.sha256(_jcs_simple(PAGE_DOC)).hexdigest()


async def test_get_returns_full_details(client: Any, org: Org) -> None:
    mid = (await register(client, org))["manifest_id"]
    r = await client.get(f"{base(org)}/{mid}", headers=org.headers)
    assert r.status_code == 200, r.text
    m = r.json()
    assert m["manifest_id"] == mid and m["status"] == "pending" and m["version"] == "1.0.0"
    assert m["agent"] == PAGE_DOC["agent"]
    assert m["constraints"] == PAGE_DOC["constraints"]
    assert m["metadata"] == PAGE_DOC["metadata"]
    assert m["capabilities"]["approved"] == []
    assert m["approved_by"] is None and m["approved_at"] is None
    assert m["created_by"] == "bootstrap"
    assert m["effective_limits"] == {"max_actions_per_hour": 100, "max_actions_per_day": 500}
    await act(client, org, mid, "approve")
    m = (await client.get(f"{base(org)}/{mid}", headers=org.headers)).json()
    assert m["status"] == "active"
    assert m["approved_by"] == "bootstrap" and m["approved_at"].endswith("Z")
    assert m["capabilities"]["approved"] == PAGE_DOC["capabilities"]["requested"]


async def test_effective_limits_use_the_server_defaults(client: Any, org: Org) -> None:
    d = doc()
    del d["constraints"]
    mid = (await register(client, org, d))["manifest_id"]
    m = (await client.get(f"{base(org)}/{mid}", headers=org.headers)).json()
    s = client.app.state.settings
    assert m["constraints"] == {}
    assert m["effective_limits"] == {
        "max_actions_per_hour": s.default_max_actions_per_hour,
        "max_actions_per_day": s.default_max_actions_per_day,
    }


async def test_get_unknown_or_malformed_id_is_404(client: Any, org: Org) -> None:
    for mid in (str(uuid.uuid4()), "not-a-uuid", "x" * 300):
        assert_error(await client.get(f"{base(org)}/{mid}", headers=org.headers), 404, "NOT_FOUND")


async def test_list_items_filters_and_total(client: Any, org: Org) -> None:
    a = (await register(client, org, doc("agent-a", team="support")))["manifest_id"]
    b = (await register(client, org, doc("agent-b", team="sales")))["manifest_id"]
    c = (await register(client, org, doc("agent-c", team="support")))["manifest_id"]
    await act(client, org, a, "approve")
    await act(client, org, b, "approve")
    await act(client, org, b, "suspend")

    r = await client.get(base(org), headers=org.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["total"] == 3 and len(body["items"]) == 3
    item = next(i for i in body["items"] if i["manifest_id"] == a)
    assert set(item) == {"manifest_id", "uapk_id", "status", "agent", "capabilities_count", "created_at", "approved_at"}
    assert item["agent"] == {"name": "Customer Support Bot", "version": "1.0.0", "team": "support"}
    assert item["capabilities_count"] == 4 and item["status"] == "active" and item["approved_at"].endswith("Z")
    pending = next(i for i in body["items"] if i["manifest_id"] == c)
    assert pending["approved_at"] is None

    r = await client.get(base(org), params={"status": "active"}, headers=org.headers)
    assert [i["manifest_id"] for i in r.json()["items"]] == [a] and r.json()["total"] == 1
    r = await client.get(base(org), params={"status": "suspended"}, headers=org.headers)
    assert [i["manifest_id"] for i in r.json()["items"]] == [b]
    r = await client.get(base(org), params={"team": "support"}, headers=org.headers)
    assert {i["manifest_id"] for i in r.json()["items"]} == {a, c} and r.json()["total"] == 2
    r = await client.get(base(org), params={"team": "support", "status": "pending"}, headers=org.headers)
    assert [i["manifest_id"] for i in r.json()["items"]] == [c]
    r = await client.get(base(org), params={"team": "nobody"}, headers=org.headers)
    assert r.json() == {"items": [], "total": 0}
    assert_error(await client.get(base(org), params={"status": "bogus"}, headers=org.headers), 400, "VALIDATION_ERROR")


async def test_list_pagination(client: Any, org: Org) -> None:
    ids = [(await register(client, org, doc(f"agent-{i:02d}")))["manifest_id"] for i in range(5)]
    r = await client.get(base(org), params={"limit": 2}, headers=org.headers)
    first = r.json()
    assert first["total"] == 5 and len(first["items"]) == 2
    r = await client.get(base(org), params={"limit": 2, "offset": 2}, headers=org.headers)
    second = r.json()
    r = await client.get(base(org), params={"limit": 2, "offset": 4}, headers=org.headers)
    third = r.json()
    seen = [i["manifest_id"] for i in first["items"] + second["items"] + third["items"]]
    assert sorted(seen) == sorted(ids) and len(third["items"]) == 1
    r = await client.get(base(org), params={"offset": 10}, headers=org.headers)
    assert r.json() == {"items": [], "total": 5}


@pytest.mark.parametrize("params,field", [
    ({"limit": "0"}, "limit"), ({"limit": "101"}, "limit"), ({"limit": "-1"}, "limit"),
    ({"limit": "abc"}, "limit"), ({"offset": "-1"}, "offset"), ({"offset": "abc"}, "offset"),
])
async def test_list_pagination_bounds(client: Any, org: Org, params: dict[str, str], field: str) -> None:
    body = assert_error(await client.get(base(org), params=params, headers=org.headers), 400, "VALIDATION_ERROR")
    assert [d["field"] for d in body["details"]] == [field]


async def test_list_default_limit_is_50(client: Any, org: Org) -> None:
    from core.clock import utcnow
    from store import manifests as repo

    runtime = client.app.state.runtime
    async with runtime.sessions() as session, session.begin():
        for i in range(51):
            d = doc(f"bulk-{i:02d}")
            await repo.register(session, org.org_id, d, "sha256:" + "0" * 64, "test", utcnow())
    r = await client.get(base(org), headers=org.headers)
    assert r.json()["total"] == 51 and len(r.json()["items"]) == 50
    r = await client.get(base(org), params={"limit": 100}, headers=org.headers)
    assert len(r.json()["items"]) == 51


# --- transitions ---------------------------------------------------------------------------
ALLOWED = {
    "pending": {"approve", "reject", "revoke"},
    "active": {"suspend", "revoke"},
    "suspended": {"reactivate", "revoke"},
    "rejected": {"revoke"},
    "superseded": {"revoke"},
    "revoked": set(),
}
RESULT = {"approve": "active", "reject": "rejected", "suspend": "suspended", "reactivate": "active", "revoke": "revoked"}


@pytest.mark.parametrize("state", list(ALLOWED))
async def test_every_transition_from(client: Any, org: Org, state: str) -> None:
    for n, action in enumerate(["approve", "reject", "suspend", "reactivate", "revoke"]):
        mid = await in_state(client, org, state, f"agent-{n}")
        r = await act(client, org, mid, action)
        if action in ALLOWED[state]:
            assert r.status_code == 200, (state, action, r.text)
            assert r.json()["status"] == RESULT[action]
            got = (await client.get(f"{base(org)}/{mid}", headers=org.headers)).json()
            assert got["status"] == RESULT[action]
        else:
            body = assert_error(r, 409, "CONFLICT")
            assert state in body["message"], body
            got = (await client.get(f"{base(org)}/{mid}", headers=org.headers)).json()
            assert got["status"] == state


async def test_transition_responses_follow_the_page(client: Any, org: Org) -> None:
    mid = (await register(client, org))["manifest_id"]
    r = await act(client, org, mid, "approve", {
        "approved_capabilities": ["email:send", "email:read", "crm:read"],
        "notes": "Approved for customer support operations. CRM update pending security review.",
    })
    assert r.status_code == 200, r.text
    a = r.json()
    assert a["manifest_id"] == mid and a["uapk_id"] == "customer-support-bot" and a["status"] == "active"
    assert a["capabilities"] == {
        "requested": ["email:send", "email:read", "crm:read", "crm:update"],
        "approved": ["email:send", "email:read", "crm:read"],
    }
    assert a["approved_by"] == "bootstrap" and a["approved_at"].endswith("Z")
    assert a["notes"].startswith("Approved for customer support")

    r = await act(client, org, mid, "suspend", {"reason": "Security review required", "notes": "Anomalies"})
    s = r.json()
    assert r.status_code == 200 and s["status"] == "suspended"
    assert {k: s[k] for k in ("manifest_id", "uapk_id", "suspended_by", "reason", "notes")} == {
        "manifest_id": mid, "uapk_id": "customer-support-bot", "suspended_by": "bootstrap",
        "reason": "Security review required", "notes": "Anomalies",
    }
    assert s["suspended_at"].endswith("Z")

    r = await act(client, org, mid, "reactivate", {"notes": "Investigation complete"})
    ra = r.json()
    assert r.status_code == 200 and ra["status"] == "active"
    assert ra["reactivated_by"] == "bootstrap" and ra["reactivated_at"] and ra["notes"] == "Investigation complete"

    r = await act(client, org, mid, "revoke", {"reason": "Agent decommissioned", "notes": "Replaced by v2.0"})
    rv = r.json()
    assert r.status_code == 200 and rv["status"] == "revoked"
    assert rv["revoked_by"] == "bootstrap" and rv["revoked_at"] and rv["reason"] == "Agent decommissioned"
    assert rv["notes"] == "Replaced by v2.0"

    full = (await client.get(f"{base(org)}/{mid}", headers=org.headers)).json()
    assert full["approved_by"] == full["suspended_by"] == full["reactivated_by"] == full["revoked_by"] == "bootstrap"
    assert full["capabilities"]["approved"] == ["email:send", "email:read", "crm:read"]
    assert full["reason"] == "Agent decommissioned"

    other = (await register(client, org, doc("other-bot")))["manifest_id"]
    r = await act(client, org, other, "reject", {"reason": "Too broad", "notes": "Reduce scope"})
    rj = r.json()
    assert r.status_code == 200 and rj["status"] == "rejected"
    assert rj["rejected_by"] == "bootstrap" and rj["rejected_at"] and rj["reason"] == "Too broad" and rj["notes"] == "Reduce scope"


async def test_transitions_accept_an_empty_body(client: Any, org: Org) -> None:
    mid = (await register(client, org))["manifest_id"]
    r = await client.post(f"{base(org)}/{mid}/approve", headers=org.headers)
    assert r.status_code == 200, r.text
    assert r.json()["capabilities"]["approved"] == PAGE_DOC["capabilities"]["requested"]
    r = await client.post(f"{base(org)}/{mid}/suspend", headers=org.headers)
    assert r.status_code == 200 and r.json()["reason"] is None


async def test_transition_body_is_validated(client: Any, org: Org) -> None:
    mid = (await register(client, org))["manifest_id"]
    body = assert_error(await act(client, org, mid, "approve", {"notez": "x"}), 400, "VALIDATION_ERROR")
    assert body["details"][0]["field"] == "notez"
    body = assert_error(await act(client, org, mid, "approve", {"approved_capabilities": "email:send"}), 400, "VALIDATION_ERROR")
    assert body["details"][0]["field"] == "approved_capabilities"
    body = assert_error(await act(client, org, mid, "approve", {"approved_capabilities": []}), 400, "VALIDATION_ERROR")
    assert body["details"][0]["field"] == "approved_capabilities"
    body = assert_error(await act(client, org, mid, "reject", {"reason": "x" * 1001}), 400, "VALIDATION_ERROR")
    assert body["details"][0]["field"] == "reason"
    r = await client.post(f"{base(org)}/{mid}/approve", content=b"[1,", headers={**org.headers, "content-type": "application/json"})
    assert_error(r, 400, "VALIDATION_ERROR")
    got = (await client.get(f"{base(org)}/{mid}", headers=org.headers)).json()
    assert got["status"] == "pending"


async def test_approving_an_unrequested_capability_is_422(client: Any, org: Org) -> None:
    mid = (await register(client, org))["manifest_id"]
    r = await act(client, org, mid, "approve", {"approved_capabilities": ["email:send", "crm:delete"]})
    body = assert_error(r, 422, "UNPROCESSABLE_ENTITY")
    assert "crm:delete" in body["message"]
    assert body["details"] == [{"field": "approved_capabilities.1", "issue": "crm:delete was not requested."}]
    got = (await client.get(f"{base(org)}/{mid}", headers=org.headers)).json()
    assert got["status"] == "pending"


async def test_approve_may_narrow_a_requested_wildcard(client: Any, org: Org) -> None:
    d = doc()
    d["capabilities"]["requested"] = ["crm:*", "*:read", "email:send"]
    mid = (await register(client, org, d))["manifest_id"]
    # Broader than requested, or merely overlapping: refused.
    r = await act(client, org, mid, "approve", {"approved_capabilities": ["crm:read", "*:*", "email:*", "crm:read\n"]})
    body = assert_error(r, 422, "UNPROCESSABLE_ENTITY")
    assert [x["field"] for x in body["details"]] == [
        "approved_capabilities.1", "approved_capabilities.2", "approved_capabilities.3",
    ]
    r = await act(client, org, mid, "approve", {"approved_capabilities": ["crm:read", "docs:read", "email:send", "crm:read"]})
    assert r.status_code == 200, r.text
    assert r.json()["capabilities"]["approved"] == ["crm:read", "docs:read", "email:send"]


async def test_approve_records_the_users_email(client: Any, org: Org) -> None:
    r = await client.post("/api/v1/auth/login", json={"email": org.email, "password": org.password})
    auth = {"Authorization": f"Bearer {r.json()['access_token']}"}
    mid = (await register(client, org, headers=auth))["manifest_id"]
    r = await act(client, org, mid, "approve", headers=auth)
    assert r.json()["approved_by"] == org.email
    r = await act(client, org, mid, "suspend", {"reason": "check"}, headers=auth)
    assert r.json()["suspended_by"] == org.email
    full = (await client.get(f"{base(org)}/{mid}", headers=auth)).json()
    assert full["created_by"] == org.email


async def test_every_change_records_an_event(client: Any, org: Org) -> None:
    mid = (await register(client, org))["manifest_id"]
    await act(client, org, mid, "approve", {"notes": "ok"})
    await act(client, org, mid, "suspend", {"reason": "why", "notes": "n"})
    await act(client, org, mid, "reactivate")
    await act(client, org, mid, "revoke", {"reason": "done"})
    async with client.app.state.runtime.sessions() as session:
        rows = (await session.execute(
            select(ManifestEvent).where(ManifestEvent.manifest_id == mid).order_by(ManifestEvent.id)
        )).scalars().all()
    assert [(e.from_status, e.to_status) for e in rows] == [
        (None, "pending"), ("pending", "active"), ("active", "suspended"), ("suspended", "active"), ("active", "revoked"),
    ]
    assert all(e.actor == "bootstrap" for e in rows)
    assert rows[2].reason == "why" and rows[2].notes == "n" and rows[1].notes == "ok" and rows[4].reason == "done"


async def test_changes_bump_the_org_version_and_are_announced(client: Any, org: Org) -> None:
    runtime = client.app.state.runtime
    seen: list[ManifestChanged] = []

    async def listener(message: Change) -> None:
        # With Redis the bus drops the copy of this process's own messages that pub/sub hands
        # back: each is seen once, delivered locally.
        if isinstance(message, ManifestChanged):
            seen.append(message)

    runtime.bus.subscribe(listener)

    async def version() -> int:
        async with runtime.sessions() as session:
            v = (await session.execute(select(ChangeLog.version).where(ChangeLog.org_id == org.org_id))).scalar_one_or_none()
        return int(v or 0)

    v0 = await version()
    mid = (await register(client, org))["manifest_id"]
    v1 = await version()
    assert v1 == v0 + 1
    assert seen[-1].org_id == org.org_id and seen[-1].uapk_id == "customer-support-bot"
    assert seen[-1].version == v1 and seen[-1].status == "pending"
    expected = v1
    for action, status in [("approve", "active"), ("suspend", "suspended"), ("reactivate", "active"), ("revoke", "revoked")]:
        r = await act(client, org, mid, action)
        assert r.status_code == 200
        expected += 1
        assert await version() == expected
        assert seen[-1].version == expected and seen[-1].status == status and seen[-1].uapk_id == "customer-support-bot"
    other = (await register(client, org, doc("other-bot")))["manifest_id"]
    await act(client, org, other, "reject")
    assert await version() == expected + 2 and seen[-1].status == "rejected"
    # A refused transition changes nothing and announces nothing.
    count = len(seen)
    assert_error(await act(client, org, other, "approve"), 409, "CONFLICT")
    assert await version() == expected + 2 and len(seen) == count


# --- roles -------------------------------------------------------------------------------
async def test_viewer_reads_but_cannot_change(client: Any, org: Org) -> None:
    viewer = {"X-API-Key": await make_key(client, org, "viewer")}
    mid = (await register(client, org))["manifest_id"]
    assert (await client.get(base(org), headers=viewer)).status_code == 200
    assert (await client.get(f"{base(org)}/{mid}", headers=viewer)).status_code == 200
    assert (await client.get(f"{base(org)}/{mid}/history", headers=viewer)).status_code == 200
    assert (await client.get(f"{base(org)}/by-uapk/customer-support-bot", headers=viewer)).status_code == 200
    for action in ("approve", "reject", "suspend", "reactivate", "revoke"):
        assert_error(await act(client, org, mid, action, headers=viewer), 403, "PERMISSION_DENIED")
    assert_error(await client.post(base(org), json=doc("x-bot"), headers=viewer), 403, "PERMISSION_DENIED")
    assert_error(await client.post(f"{base(org)}/validate", json=doc(), headers=viewer), 403, "PERMISSION_DENIED")


async def test_approver_decides_but_cannot_register_or_revoke(client: Any, org: Org) -> None:
    approver = {"X-API-Key": await make_key(client, org, "approver", name="alice-approver")}
    mid = (await register(client, org))["manifest_id"]
    assert_error(await client.post(base(org), json=doc("x-bot"), headers=approver), 403, "PERMISSION_DENIED")
    assert_error(await client.post(f"{base(org)}/validate", json=doc(), headers=approver), 403, "PERMISSION_DENIED")
    r = await act(client, org, mid, "approve", headers=approver)
    assert r.status_code == 200 and r.json()["approved_by"] == "alice-approver"
    assert (await act(client, org, mid, "suspend", headers=approver)).status_code == 200
    assert (await act(client, org, mid, "reactivate", headers=approver)).status_code == 200
    assert_error(await act(client, org, mid, "revoke", headers=approver), 403, "PERMISSION_DENIED")
    other = (await register(client, org, doc("other-bot")))["manifest_id"]
    assert (await act(client, org, other, "reject", headers=approver)).status_code == 200


async def test_admin_registers_and_revokes(client: Any, org: Org) -> None:
    admin = {"X-API-Key": await make_key(client, org, "admin", name="ops-admin")}
    mid = (await register(client, org, headers=admin))["manifest_id"]
    r = await act(client, org, mid, "revoke", headers=admin)
    assert r.status_code == 200 and r.json()["revoked_by"] == "ops-admin"


async def test_agent_keys_are_refused(client: Any, org: Org) -> None:
    agent = {"X-API-Key": await make_key(client, org, "agent", ["customer-support-bot"])}
    mid = (await register(client, org))["manifest_id"]
    assert_error(await client.get(base(org), headers=agent), 403, "PERMISSION_DENIED")
    assert_error(await client.get(f"{base(org)}/{mid}", headers=agent), 403, "PERMISSION_DENIED")
    assert_error(await client.get(f"{base(org)}/by-uapk/customer-support-bot", headers=agent), 403, "PERMISSION_DENIED")
    assert_error(await client.post(base(org), json=doc("x-bot"), headers=agent), 403, "PERMISSION_DENIED")
    assert_error(await client.post(f"{base(org)}/validate", json=doc(), headers=agent), 403, "PERMISSION_DENIED")
    for action in ("approve", "reject", "suspend", "reactivate", "revoke"):
        assert_error(await act(client, org, mid, action, headers=agent), 403, "PERMISSION_DENIED")


async def test_unauthenticated_is_401(client: Any, org: Org) -> None:
    assert_error(await client.get(base(org)), 401, "AUTHENTICATION_REQUIRED")
    assert_error(await client.post(base(org), json=doc()), 401, "AUTHENTICATION_REQUIRED")


# --- tenant isolation --------------------------------------------------------------------
def _same_404(a: Any, b: Any) -> None:
    ea, eb = assert_error(a, 404, "NOT_FOUND"), assert_error(b, 404, "NOT_FOUND")
    assert (ea["code"], ea["message"], ea["details"]) == (eb["code"], eb["message"], eb["details"])


async def test_another_orgs_manifest_is_404_like_a_missing_one(client: Any, org: Org, other_org: Org) -> None:
    theirs = (await register(client, other_org, doc("their-bot")))["manifest_id"]
    missing = str(uuid.uuid4())
    for suffix in ("", "/history"):
        _same_404(
            await client.get(f"{base(org)}/{theirs}{suffix}", headers=org.headers),
            await client.get(f"{base(org)}/{missing}{suffix}", headers=org.headers),
        )
    for action in ("approve", "reject", "suspend", "reactivate", "revoke"):
        _same_404(
            await act(client, org, theirs, action),
            await act(client, org, missing, action),
        )
    _same_404(
        await client.get(f"{base(org)}/by-uapk/their-bot", headers=org.headers),
        await client.get(f"{base(org)}/by-uapk/nobody-bot", headers=org.headers),
    )
    # Their manifest is untouched and absent from our list.
    got = (await client.get(f"{base(other_org)}/{theirs}", headers=other_org.headers)).json()
    assert got["status"] == "pending"
    assert (await client.get(base(org), headers=org.headers)).json()["total"] == 0


async def test_another_orgs_path_is_404_like_a_missing_org(client: Any, org: Org, other_org: Org) -> None:
    theirs = (await register(client, other_org, doc("their-bot")))["manifest_id"]
    missing_org = str(uuid.uuid4())
    calls = [
        ("get", "", None),
        ("post", "", doc("x-bot")),
        ("post", "/validate", doc()),
        ("get", f"/{theirs}", None),
        ("get", f"/{theirs}/history", None),
        ("get", "/by-uapk/their-bot", None),
        *[("post", f"/{theirs}/{a}", {}) for a in ("approve", "reject", "suspend", "reactivate", "revoke")],
    ]
    for method, suffix, body in calls:
        kwargs: dict[str, Any] = {"headers": org.headers}
        if body is not None:
            kwargs["json"] = body
        a = await client.request(method.upper(), base(other_org) + suffix, **kwargs)
        b = await client.request(method.upper(), base(missing_org) + suffix, **kwargs)
        _same_404(a, b)
    got = (await client.get(f"{base(other_org)}/{theirs}", headers=other_org.headers)).json()
    assert got["status"] == "pending"
    assert (await client.get(base(other_org), headers=other_org.headers)).json()["total"] == 1


# --- concurrency -------------------------------------------------------------------------
async def test_two_concurrent_approvals_one_wins(client: Any, org: Org) -> None:
    mid = (await register(client, org))["manifest_id"]
    r1, r2 = await asyncio.gather(act(client, org, mid, "approve"), act(client, org, mid, "approve"))
    assert sorted([r1.status_code, r2.status_code]) == [200, 409], (r1.text, r2.text)
    loser = r1 if r1.status_code == 409 else r2
    assert "active" in assert_error(loser, 409, "CONFLICT")["message"]
    async with client.app.state.runtime.sessions() as session:
        rows = (await session.execute(select(ManifestEvent).where(ManifestEvent.manifest_id == mid))).scalars().all()
    assert sorted(e.to_status for e in rows) == ["active", "pending"]


async def test_concurrent_approve_and_reject_one_wins(client: Any, org: Org) -> None:
    mid = (await register(client, org))["manifest_id"]
    r1, r2 = await asyncio.gather(act(client, org, mid, "approve"), act(client, org, mid, "reject"))
    assert sorted([r1.status_code, r2.status_code]) == [200, 409], (r1.text, r2.text)
    final = (await client.get(f"{base(org)}/{mid}", headers=org.headers)).json()["status"]
    assert final == ("active" if r1.status_code == 200 else "rejected")


async def test_concurrent_approvals_of_two_versions_leave_one_active(client: Any, org: Org) -> None:
    pairs = []
    for n in range(8):
        v1 = (await register(client, org, doc(f"race-{n}", version="1.0.0")))["manifest_id"]
        v2 = (await register(client, org, doc(f"race-{n}", version="1.1.0")))["manifest_id"]
        pairs.append((v1, v2))
    results = await asyncio.gather(*[act(client, org, m, "approve") for pair in pairs for m in pair])
    assert all(r.status_code == 200 for r in results), [r.text for r in results]
    for v1, v2 in pairs:
        statuses = sorted([
            (await client.get(f"{base(org)}/{m}", headers=org.headers)).json()["status"] for m in (v1, v2)
        ])
        assert statuses == ["active", "superseded"]


async def test_concurrent_registrations_of_one_version(client: Any, org: Org) -> None:
    r1, r2 = await asyncio.gather(
        client.post(base(org), json=doc(), headers=org.headers),
        client.post(base(org), json=doc(), headers=org.headers),
    )
    assert sorted([r1.status_code, r2.status_code]) == [201, 409], (r1.text, r2.text)


# --- versions, supersede, by-uapk, history -----------------------------------------------
async def test_new_version_waits_for_approval_then_supersedes(client: Any, org: Org) -> None:
    v1 = (await register(client, org, doc(version="1.0.0")))["manifest_id"]
    await act(client, org, v1, "approve")
    d2 = doc(version="1.0.1")
    d2["capabilities"]["requested"].append("crm:delete")
    r = await register(client, org, d2)
    v2 = r["manifest_id"]
    assert r["uapk_id"] == "customer-support-bot" and r["status"] == "pending" and v2 != v1

    # The agent keeps running on the active one.
    by = (await client.get(f"{base(org)}/by-uapk/customer-support-bot", headers=org.headers)).json()
    assert by["manifest_id"] == v1 and by["status"] == "active"

    r = await act(client, org, v2, "approve")
    assert r.status_code == 200 and r.json()["superseded"] == [v1]
    old = (await client.get(f"{base(org)}/{v1}", headers=org.headers)).json()
    assert old["status"] == "superseded" and old["superseded_at"].endswith("Z")
    by = (await client.get(f"{base(org)}/by-uapk/customer-support-bot", headers=org.headers)).json()
    assert by["manifest_id"] == v2 and by["status"] == "active"
    # Superseded is not reversible by reactivate/approve; only revoke.
    assert_error(await act(client, org, v1, "reactivate"), 409, "CONFLICT")
    assert (await act(client, org, v1, "revoke")).status_code == 200


async def test_approving_a_new_version_supersedes_a_suspended_one(client: Any, org: Org) -> None:
    v1 = (await register(client, org, doc(version="1.0.0")))["manifest_id"]
    await act(client, org, v1, "approve")
    await act(client, org, v1, "suspend")
    v2 = (await register(client, org, doc(version="2.0.0")))["manifest_id"]
    assert (await act(client, org, v2, "approve")).status_code == 200
    assert (await client.get(f"{base(org)}/{v1}", headers=org.headers)).json()["status"] == "superseded"
    async with client.app.state.runtime.sessions() as session:
        ev = (await session.execute(
            select(ManifestEvent).where(ManifestEvent.manifest_id == v1).order_by(ManifestEvent.id)
        )).scalars().all()
    assert (ev[-1].from_status, ev[-1].to_status) == ("suspended", "superseded")


async def test_registering_an_existing_version_is_409(client: Any, org: Org, other_org: Org) -> None:
    first = await register(client, org)
    body = assert_error(await client.post(base(org), json=doc(), headers=org.headers), 409, "CONFLICT")
    assert "1.0.0" in body["message"] and body["details"][0]["field"] == "agent.version"
    # Also when the existing version is no longer pending.
    await act(client, org, first["manifest_id"], "revoke")
    assert_error(await client.post(base(org), json=doc(), headers=org.headers), 409, "CONFLICT")
    # The same agent and version in another organization is independent.
    r = await client.post(base(other_org), json=doc(), headers=other_org.headers)
    assert r.status_code == 201 and r.json()["manifest_id"] != first["manifest_id"]
    assert (await client.get(base(org), headers=org.headers)).json()["total"] == 1


async def test_agent_ids_that_look_like_routes(client: Any, org: Org) -> None:
    for agent_id in ("history", "by-uapk", "validate"):
        mid = (await register(client, org, doc(agent_id)))["manifest_id"]
        r = await client.get(f"{base(org)}/by-uapk/{agent_id}", headers=org.headers)
        assert r.status_code == 200 and r.json()["manifest_id"] == mid, r.text


async def test_by_uapk_without_active_returns_the_newest(client: Any, org: Org) -> None:
    await register(client, org, doc(version="1.0.0"))
    v2 = (await register(client, org, doc(version="1.2.0")))["manifest_id"]
    r = await client.get(f"{base(org)}/by-uapk/customer-support-bot", headers=org.headers)
    assert r.status_code == 200 and r.json()["manifest_id"] == v2 and r.json()["status"] == "pending"
    assert r.json()["agent"]["version"] == "1.2.0"
    assert_error(await client.get(f"{base(org)}/by-uapk/unknown-bot", headers=org.headers), 404, "NOT_FOUND")
    assert_error(await client.get(f"{base(org)}/by-uapk/Bad_Id", headers=org.headers), 404, "NOT_FOUND")


async def test_history_lists_versions_with_changes(client: Any, org: Org) -> None:
    d1 = doc(version="1.0.0")
    v1 = (await register(client, org, d1))["manifest_id"]
    await act(client, org, v1, "approve")
    d2 = doc(version="1.0.1")
    d2["capabilities"]["requested"] = ["email:send", "email:read", "crm:read", "crm:update", "crm:write"]
    d2["constraints"]["max_actions_per_hour"] = 200
    v2 = (await register(client, org, d2))["manifest_id"]
    await act(client, org, v2, "approve")
    d3 = doc(version="1.1.0")
    d3["capabilities"]["requested"] = ["email:read", "crm:read", "crm:update", "crm:write"]
    d3["constraints"]["max_actions_per_hour"] = 200
    d3["constraints"]["require_human_approval"] = ["crm:delete", "crm:write"]
    v3 = (await register(client, org, d3))["manifest_id"]

    r = await client.get(f"{base(org)}/{v1}/history", headers=org.headers)
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert [i["version"] for i in items] == ["1.1.0", "1.0.1", "1.0.0"]
    assert [i["status"] for i in items] == ["pending", "active", "superseded"]
    assert [i["manifest_id"] for i in items] == [v3, v2, v1]
    for i in items:
        assert set(i) >= {"version", "manifest_hash", "status", "changed_at", "changed_by", "changes"}
        assert i["manifest_hash"].startswith("sha256:") and i["changed_by"] == "bootstrap" and i["changed_at"].endswith("Z")
    assert items[2]["changes"] == ["Initial registration"]
    assert items[1]["changes"] == ["Added crm:write capability", "Changed max_actions_per_hour from 100 to 200"]
    assert items[0]["changes"] == ["Removed email:send capability", "Added crm:write to require_human_approval"]
    assert [e["to_status"] for e in items[2]["events"]] == ["pending", "active", "superseded"]
    # The same history from any version of the agent.
    r3 = await client.get(f"{base(org)}/{v3}/history", headers=org.headers)
    assert r3.json()["items"] == items


# --- the page's curl sequence, end to end ------------------------------------------------
async def test_page_walkthrough(client: Any, org: Org) -> None:
    h = org.headers
    v = await client.post(f"{base(org)}/validate", json={
        "version": "1.0",
        "agent": {"id": "test-agent", "name": "Test Agent", "version": "1.0.0"},
        "capabilities": {"requested": ["email:send"]},
    }, headers=h)
    assert v.status_code == 200 and v.json()["valid"] is True and v.json()["manifest_hash"].startswith("sha256:")
    assert v.json()["warnings"] == [{"field": "constraints", "message": "No rate limits defined, defaults will apply"}]

    r = await client.post(base(org), json=PAGE_DOC, headers=h)
    assert r.status_code == 201
    mid = r.json()["manifest_id"]
    r = await client.get(base(org), params={"status": "active"}, headers=h)
    assert r.json() == {"items": [], "total": 0}
    r = await client.post(f"{base(org)}/{mid}/approve", json={
        "approved_capabilities": ["email:send", "email:read", "crm:read"],
        "notes": "Approved for customer support operations. CRM update pending security review.",
    }, headers=h)
    assert r.status_code == 200 and r.json()["status"] == "active"
    r = await client.get(base(org), params={"status": "active"}, headers=h)
    assert r.json()["total"] == 1 and r.json()["items"][0]["manifest_id"] == mid
    r = await client.get(f"{base(org)}/{mid}", headers=h)
    assert r.json()["capabilities"]["approved"] == ["email:send", "email:read", "crm:read"]
    r = await client.post(f"{base(org)}/{mid}/suspend", json={"reason": "Security review required", "notes": "n"}, headers=h)
    assert r.json()["status"] == "suspended"
    r = await client.post(f"{base(org)}/{mid}/reactivate", json={"notes": "Investigation complete, no issues found"}, headers=h)
    assert r.json()["status"] == "active"
    r = await client.get(f"{base(org)}/by-uapk/customer-support-bot", headers=h)
    assert r.json()["manifest_id"] == mid
    r = await client.post(f"{base(org)}/{mid}/revoke", json={"reason": "Agent decommissioned", "notes": "Agent replaced by v2.0"}, headers=h)
    assert r.json()["status"] == "revoked"
    assert_error(await client.post(f"{base(org)}/{mid}/reactivate", json={}, headers=h), 409, "CONFLICT")
    r = await client.get(f"{base(org)}/{mid}/history", headers=h)
    assert [i["status"] for i in r.json()["items"]] == ["revoked"]
    # After revocation the agent registers a new manifest (a new version).
    r = await client.post(base(org), json=doc(version="2.0.0"), headers=h)
    assert r.status_code == 201 and r.json()["status"] == "pending"
    r = await client.get(f"{base(org)}/by-uapk/customer-support-bot", headers=h)
    assert r.json()["agent"]["version"] == "2.0.0"
