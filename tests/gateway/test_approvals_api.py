"""Approvals: the human API (list, read, approve, deny) and the agent's polling endpoint."""
from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from sqlalchemy import update

from gateway.approvals import create_approval, on_override_consumed
from gateway.overrides import OverrideOk, check_override
from store.models import Approval
from tests.conftest import Org, assert_error, make_key

ACTION: dict[str, Any] = {
    "type": "refund", "tool": "stripe_api", "params": {"charge_id": "ch_1", "amount": 5000},
    "amount": 5000.0, "currency": "EUR",
}
REASONS = [{"code": "amount_requires_approval", "message": "Amount 5000 needs a human."}]


async def _escalate(client: Any, org: Org, uapk_id: str = "refund-bot", agent_id: str = "agent-1", **kw: Any) -> str:
    return await create_approval(
        client.app.state.runtime, org_id=org.org_id, uapk_id=uapk_id, agent_id=agent_id,
        capability=kw.get("capability", "payments:refund"), action=kw.get("action", ACTION),
        reasons=REASONS, interaction_id=kw.get("interaction_id", "11111111-1111-1111-1111-111111111111"),
        key_id=None,
    )


async def _expire(client: Any, approval_id: str) -> None:
    async with client.app.state.runtime.sessions() as s, s.begin():
        await s.execute(
            update(Approval).where(Approval.id == approval_id)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )


def _base(org: Org) -> str:
    return f"/api/v1/orgs/{org.org_id}/approvals"


def _parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


async def test_escalation_creates_a_pending_approval(client: Any, org: Org) -> None:
    before = datetime.now(UTC)
    approval_id = await _escalate(client, org)
    r = await client.get(f"{_base(org)}/{approval_id}", headers=org.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["approval_id"] == approval_id and body["status"] == "PENDING"
    assert body["uapk_id"] == "refund-bot" and body["agent_id"] == "agent-1"
    assert body["action"] == ACTION and body["reasons"] == REASONS
    assert body["created_at"].endswith("Z") and body["expires_at"].endswith("Z")
    # Default expiry: 24 h.
    ttl = _parse(body["expires_at"]) - _parse(body["created_at"])
    assert ttl == timedelta(hours=24)
    assert _parse(body["created_at"]) >= before - timedelta(seconds=1)
    assert "override_token" not in body and body["decided_by"] is None


async def test_approval_expiry_is_configurable(settings_factory: Any) -> None:
    from bastion.app import create_app
    from tests.conftest import bootstrap_org, serve_app

    async with serve_app(create_app(settings_factory(approval_ttl_seconds=600))) as c:
        org = await bootstrap_org(c.app)
        approval_id = await _escalate(c, org)
        body = (await c.get(f"{_base(org)}/{approval_id}", headers=org.headers)).json()
        assert _parse(body["expires_at"]) - _parse(body["created_at"]) == timedelta(seconds=600)


async def test_approve_issues_a_bound_override_token(client: Any, org: Org) -> None:
    approval_id = await _escalate(client, org)
    approver = await make_key(client, org, "approver", name="alice-approver")
    agent = await make_key(client, org, "agent")
    # Before the decision the agent sees PENDING and no token.
    r = await client.get(f"/api/v1/approvals/{approval_id}", headers={"X-API-Key": agent})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "PENDING" and r.json()["override_token"] is None

    t0 = int(time.time())
    r = await client.post(f"{_base(org)}/{approval_id}/approve", json={"notes": "ok, known customer"}, headers={"X-API-Key": approver})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "APPROVED" and body["decided_by"] == "alice-approver" and body["notes"] == "ok, known customer"
    assert body["decided_at"].endswith("Z")
    token = body["override_token"]
    exp = int(_parse(body["override_expires_at"]).timestamp())
    assert t0 + 300 <= exp <= int(time.time()) + 300  # default lifetime 300 s
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["approval_id"] == approval_id and claims["exp"] == exp

    runtime = client.app.state.runtime
    ok = check_override(
        runtime.keys, runtime.settings, token, org_id=org.org_id, uapk_id="refund-bot", agent_id="agent-1",
        capability="payments:refund", tool="stripe_api", type="refund", params=ACTION["params"], amount=5000,
        currency="EUR",
    )
    assert isinstance(ok, OverrideOk) and ok.approval_id == approval_id and ok.jti == claims["jti"]

    # The agent's poll now returns the token; the human GET never shows it.
    r = await client.get(f"/api/v1/approvals/{approval_id}", headers={"X-API-Key": agent})
    agent_view = r.json()
    assert agent_view["status"] == "APPROVED" and agent_view["override_token"] == token
    assert agent_view["override_expires_at"] == body["override_expires_at"]
    assert "decided_by" not in agent_view and "notes" not in agent_view
    human = (await client.get(f"{_base(org)}/{approval_id}", headers=org.headers)).json()
    assert human["status"] == "APPROVED" and "override_token" not in human

    # A second decision is a conflict.
    r = await client.post(f"{_base(org)}/{approval_id}/approve", headers={"X-API-Key": approver})
    assert_error(r, 409, "CONFLICT")
    r = await client.post(f"{_base(org)}/{approval_id}/deny", headers={"X-API-Key": approver})
    assert_error(r, 409, "CONFLICT")


async def test_approve_lifetime_bounds(client: Any, org: Org) -> None:
    approval_id = await _escalate(client, org)
    for bad in (9, 0, -1, 86401):
        r = await client.post(f"{_base(org)}/{approval_id}/approve", json={"expires_in_seconds": bad}, headers=org.headers)
        body = assert_error(r, 400, "VALIDATION_ERROR")
        assert body["details"][0]["field"] == "expires_in_seconds"
    r = await client.post(f"{_base(org)}/{approval_id}/approve", json={"unknown": 1}, headers=org.headers)
    assert_error(r, 400, "VALIDATION_ERROR")
    # Still pending after all the refusals.
    assert (await client.get(f"{_base(org)}/{approval_id}", headers=org.headers)).json()["status"] == "PENDING"
    r = await client.post(f"{_base(org)}/{approval_id}/approve", json={"expires_in_seconds": 10}, headers=org.headers)
    assert r.status_code == 200, r.text
    claims = jwt.decode(r.json()["override_token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 10
    other = await _escalate(client, org)
    r = await client.post(f"{_base(org)}/{other}/approve", json={"expires_in_seconds": 86400}, headers=org.headers)
    claims = jwt.decode(r.json()["override_token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 86400


async def test_deny(client: Any, org: Org) -> None:
    approval_id = await _escalate(client, org)
    agent = await make_key(client, org, "agent")
    r = await client.post(
        f"{_base(org)}/{approval_id}/deny", json={"reason": "Not a known customer", "notes": "call them\nfirst"},
        headers=org.headers,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "DENIED" and body["reason"] == "Not a known customer" and body["notes"] == "call them\nfirst"
    assert body["decided_by"] == "bootstrap" and body["decided_at"] and body["override_expires_at"] is None
    r = await client.get(f"/api/v1/approvals/{approval_id}", headers={"X-API-Key": agent})
    assert r.json()["status"] == "DENIED" and r.json()["override_token"] is None
    assert r.json()["reason"] == "Not a known customer"
    r = await client.post(f"{_base(org)}/{approval_id}/approve", headers=org.headers)
    assert_error(r, 409, "CONFLICT")
    r = await client.post(f"{_base(org)}/{approval_id}/deny", json={"reason": "x" * 1001}, headers=org.headers)
    assert_error(r, 400, "VALIDATION_ERROR")


async def test_expired_approval_reads_expired_and_cannot_be_decided(client: Any, org: Org) -> None:
    approval_id = await _escalate(client, org)
    agent = await make_key(client, org, "agent")
    await _expire(client, approval_id)
    assert (await client.get(f"{_base(org)}/{approval_id}", headers=org.headers)).json()["status"] == "EXPIRED"
    assert (await client.get(f"/api/v1/approvals/{approval_id}", headers={"X-API-Key": agent})).json()["status"] == "EXPIRED"
    r = await client.post(f"{_base(org)}/{approval_id}/deny", json={"reason": "late"}, headers=org.headers)
    body = assert_error(r, 409, "CONFLICT")
    assert "expired" in body["message"]
    r = await client.post(f"{_base(org)}/{approval_id}/approve", headers=org.headers)
    assert_error(r, 409, "CONFLICT")
    listed = (await client.get(_base(org), params={"status": "expired"}, headers=org.headers)).json()
    assert [a["approval_id"] for a in listed["items"]] == [approval_id]
    assert (await client.get(_base(org), params={"status": "PENDING"}, headers=org.headers)).json()["total"] == 0


async def test_expiry_between_read_and_update_is_a_conflict(client: Any, org: Org) -> None:
    """The conditional UPDATE itself checks expires_at, not just the read before it."""
    from core.clock import utcnow
    from store import approvals as repo

    approval_id = await _escalate(client, org)
    await _expire(client, approval_id)
    async with client.app.state.runtime.sessions() as s, s.begin():
        won = await repo.decide(s, org.org_id, approval_id, to_status=repo.DENIED, actor="x", now=utcnow())
    assert won is False


async def test_concurrent_decisions_exactly_one_wins(client: Any, org: Org) -> None:
    approver = {"X-API-Key": await make_key(client, org, "approver")}
    for pair in (("approve", "deny"), ("deny", "approve"), ("approve", "approve"), ("deny", "deny")):
        approval_id = await _escalate(client, org)
        responses = await asyncio.gather(
            *(client.post(f"{_base(org)}/{approval_id}/{verb}", json={}, headers=approver) for verb in pair)
        )
        codes = sorted(r.status_code for r in responses)
        assert codes == [200, 409], [r.text for r in responses]
        winner = next(r for r in responses if r.status_code == 200).json()
        stored = (await client.get(f"{_base(org)}/{approval_id}", headers=org.headers)).json()
        assert stored["status"] == winner["status"] and stored["decided_at"] == winner["decided_at"]
        loser = next(r for r in responses if r.status_code == 409)
        assert_error(loser, 409, "CONFLICT")


async def test_concurrent_conditional_updates_in_the_repository(client: Any, org: Org) -> None:
    """Ten decisions racing at the SQL level: exactly one row change."""
    from core.clock import utcnow
    from store import approvals as repo

    approval_id = await _escalate(client, org)
    runtime = client.app.state.runtime

    async def decide(i: int) -> bool:
        async with runtime.sessions() as s, s.begin():
            return await repo.decide(
                s, org.org_id, approval_id, to_status=repo.APPROVED if i % 2 else repo.DENIED, actor=f"a{i}", now=utcnow(),
            )

    results = await asyncio.gather(*(decide(i) for i in range(10)))
    assert results.count(True) == 1


async def test_tenant_isolation(client: Any, org: Org, other_org: Org) -> None:
    mine = await _escalate(client, org)
    theirs = await _escalate(client, other_org)
    missing = "00000000-0000-0000-0000-000000000000"
    # Another org's approval under my org id reads exactly like a missing one.
    for approval_id in (theirs, missing):
        r = await client.get(f"{_base(org)}/{approval_id}", headers=org.headers)
        a = assert_error(r, 404, "NOT_FOUND")
        r = await client.post(f"{_base(org)}/{approval_id}/approve", headers=org.headers)
        b = assert_error(r, 404, "NOT_FOUND")
        r = await client.post(f"{_base(org)}/{approval_id}/deny", headers=org.headers)
        assert_error(r, 404, "NOT_FOUND")
        assert a["message"] == b["message"]
    # Their org id with my credentials: 404 as well.
    r = await client.get(f"{_base(other_org)}/{theirs}", headers=org.headers)
    assert_error(r, 404, "NOT_FOUND")
    r = await client.post(f"{_base(other_org)}/{theirs}/approve", headers=org.headers)
    assert_error(r, 404, "NOT_FOUND")
    r = await client.get(_base(other_org), headers=org.headers)
    assert_error(r, 404, "NOT_FOUND")
    listed = (await client.get(_base(org), headers=org.headers)).json()
    assert [a["approval_id"] for a in listed["items"]] == [mine] and listed["total"] == 1
    # The agent endpoint: another org's key sees 404, for theirs and for a missing id alike.
    their_agent = {"X-API-Key": await make_key(client, other_org, "agent")}
    r = await client.get(f"/api/v1/approvals/{mine}", headers=their_agent)
    c = assert_error(r, 404, "NOT_FOUND")
    r = await client.get(f"/api/v1/approvals/{missing}", headers=their_agent)
    assert assert_error(r, 404, "NOT_FOUND")["message"] == c["message"]
    assert (await client.get(f"/api/v1/approvals/{theirs}", headers=their_agent)).status_code == 200
    # Still pending: nothing above decided it.
    assert (await client.get(f"{_base(other_org)}/{theirs}", headers=other_org.headers)).json()["status"] == "PENDING"


async def test_agent_key_restricted_to_uapk_ids(client: Any, org: Org) -> None:
    a = await _escalate(client, org, uapk_id="refund-bot")
    b = await _escalate(client, org, uapk_id="email-bot")
    restricted = {"X-API-Key": await make_key(client, org, "agent", uapk_ids=["refund-bot"])}
    assert (await client.get(f"/api/v1/approvals/{a}", headers=restricted)).status_code == 200
    assert_error(await client.get(f"/api/v1/approvals/{b}", headers=restricted), 404, "NOT_FOUND")
    unrestricted = {"X-API-Key": await make_key(client, org, "agent", name="any-agent")}
    assert (await client.get(f"/api/v1/approvals/{b}", headers=unrestricted)).status_code == 200


async def test_agent_endpoint_needs_an_api_key(client: Any, org: Org) -> None:
    approval_id = await _escalate(client, org)
    assert_error(await client.get(f"/api/v1/approvals/{approval_id}"), 401, "AUTHENTICATION_REQUIRED")
    r = await client.get(f"/api/v1/approvals/{approval_id}", headers={"X-API-Key": "bst_not-a-real-key"})
    assert_error(r, 401, "AUTHENTICATION_REQUIRED")
    login = await client.post("/api/v1/auth/login", json={"email": org.email, "password": org.password})
    bearer = {"Authorization": f"Bearer {login.json()['access_token']}"}
    assert_error(await client.get(f"/api/v1/approvals/{approval_id}", headers=bearer), 401, "AUTHENTICATION_REQUIRED")


async def test_roles(client: Any, org: Org) -> None:
    approval_id = await _escalate(client, org)
    viewer = {"X-API-Key": await make_key(client, org, "viewer")}
    agent = {"X-API-Key": await make_key(client, org, "agent")}
    policy_author = {"X-API-Key": await make_key(client, org, "policy_author")}
    assert (await client.get(_base(org), headers=viewer)).status_code == 200
    assert (await client.get(f"{_base(org)}/{approval_id}", headers=viewer)).status_code == 200
    for headers in (viewer, policy_author, agent):
        assert_error(await client.post(f"{_base(org)}/{approval_id}/approve", headers=headers), 403, "PERMISSION_DENIED")
        assert_error(await client.post(f"{_base(org)}/{approval_id}/deny", headers=headers), 403, "PERMISSION_DENIED")
    # An agent key cannot use the human side at all.
    assert_error(await client.get(_base(org), headers=agent), 403, "PERMISSION_DENIED")
    assert (await client.get(f"{_base(org)}/{approval_id}", headers=org.headers)).json()["status"] == "PENDING"
    # Approver and admin may decide; a user session (owner) too.
    admin = {"X-API-Key": await make_key(client, org, "admin")}
    assert (await client.post(f"{_base(org)}/{approval_id}/deny", headers=admin)).status_code == 200
    second = await _escalate(client, org)
    login = await client.post("/api/v1/auth/login", json={"email": org.email, "password": org.password})
    bearer = {"Authorization": f"Bearer {login.json()['access_token']}"}
    r = await client.post(f"{_base(org)}/{second}/approve", headers=bearer)
    assert r.status_code == 200 and r.json()["decided_by"] == org.email


async def test_list_filters_and_pagination(client: Any, org: Org) -> None:
    ids = [await _escalate(client, org, uapk_id="refund-bot") for _ in range(3)]
    other = await _escalate(client, org, uapk_id="email-bot")
    await client.post(f"{_base(org)}/{ids[0]}/approve", headers=org.headers)
    await client.post(f"{_base(org)}/{ids[1]}/deny", headers=org.headers)
    await _expire(client, ids[2])

    async def listed(**params: Any) -> dict[str, Any]:
        r = await client.get(_base(org), params=params, headers=org.headers)
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    everything = await listed()
    assert everything["total"] == 4 and len(everything["items"]) == 4
    assert {a["status"] for a in everything["items"]} == {"APPROVED", "DENIED", "EXPIRED", "PENDING"}
    for status, expected in (("pending", other), ("PENDING", other), ("approved", ids[0]), ("Denied", ids[1]), ("EXPIRED", ids[2])):
        body = await listed(status=status)
        assert [a["approval_id"] for a in body["items"]] == [expected] and body["total"] == 1, status
        assert body["items"][0]["status"] == status.upper()
    assert (await listed(uapk_id="refund-bot"))["total"] == 3
    assert (await listed(uapk_id="email-bot", status="pending"))["total"] == 1
    assert (await listed(uapk_id="email-bot", status="approved"))["total"] == 0
    page1 = await listed(limit=2, offset=0)
    page2 = await listed(limit=2, offset=2)
    assert page1["total"] == page2["total"] == 4
    seen = [a["approval_id"] for a in page1["items"] + page2["items"]]
    assert sorted(seen) == sorted(ids + [other])
    assert all("override_token" not in a for a in everything["items"])
    assert_error(await client.get(_base(org), params={"status": "open"}, headers=org.headers), 400, "VALIDATION_ERROR")
    assert_error(await client.get(_base(org), params={"limit": 101}, headers=org.headers), 400, "VALIDATION_ERROR")


async def test_override_use_is_recorded_once_and_hides_the_token(client: Any, org: Org) -> None:
    approval_id = await _escalate(client, org)
    agent = {"X-API-Key": await make_key(client, org, "agent")}
    body = (await client.post(f"{_base(org)}/{approval_id}/approve", headers=org.headers)).json()
    jti = jwt.decode(body["override_token"], options={"verify_signature": False})["jti"]
    runtime = client.app.state.runtime
    await on_override_consumed(runtime, org.org_id, approval_id, "some-other-jti")
    assert (await client.get(f"{_base(org)}/{approval_id}", headers=org.headers)).json()["override_used_at"] is None
    await on_override_consumed(runtime, org.org_id, approval_id, jti)
    first = (await client.get(f"{_base(org)}/{approval_id}", headers=org.headers)).json()["override_used_at"]
    assert first is not None
    await asyncio.sleep(0.01)
    await on_override_consumed(runtime, org.org_id, approval_id, jti)
    assert (await client.get(f"{_base(org)}/{approval_id}", headers=org.headers)).json()["override_used_at"] == first
    polled = (await client.get(f"/api/v1/approvals/{approval_id}", headers=agent)).json()
    assert polled["status"] == "APPROVED" and polled["override_token"] is None


async def test_action_that_cannot_be_canonicalised_cannot_be_approved(client: Any, org: Org) -> None:
    action = {**ACTION, "params": {"n": 2**60}}
    approval_id = await _escalate(client, org, action=action)
    r = await client.post(f"{_base(org)}/{approval_id}/approve", headers=org.headers)
    assert_error(r, 422, "UNPROCESSABLE_ENTITY")
    assert (await client.get(f"{_base(org)}/{approval_id}", headers=org.headers)).json()["status"] == "PENDING"
    r = await client.post(f"{_base(org)}/{approval_id}/deny", json={"reason": "cannot be approved"}, headers=org.headers)
    assert r.status_code == 200 and r.json()["status"] == "DENIED"


async def test_decisions_are_audited(client: Any, org: Org) -> None:
    approved = await _escalate(client, org)
    denied = await _escalate(client, org, agent_id="agent-2")
    approver = {"X-API-Key": await make_key(client, org, "approver")}
    r = await client.post(f"{_base(org)}/{approved}/approve", json={"notes": "fine"}, headers=approver)
    jti = jwt.decode(r.json()["override_token"], options={"verify_signature": False})["jti"]
    await client.post(f"{_base(org)}/{denied}/deny", json={"reason": "no"}, headers=approver)
    # A refused (409) decision records nothing.
    assert (await client.post(f"{_base(org)}/{denied}/approve", headers=approver)).status_code == 409
    await client.app.state.audit.flush()
    audit = f"/api/v1/orgs/{org.org_id}/audit/events"
    events = (await client.get(audit, params={"kind": "approval.approved"}, headers=org.headers)).json()["items"]
    assert len(events) == 1
    e = events[0]
    assert e["uapk_id"] == "refund-bot" and e["agent_id"] == "agent-1" and e["capability"] == "payments:refund"
    assert e["actor"].startswith("api_key:") and e["details"]["approval_id"] == approved
    assert e["details"]["override_jti"] == jti and e["details"]["notes"] == "fine"
    assert r.json()["override_token"] not in str(e)  # the credential itself is never logged
    events = (await client.get(audit, params={"kind": "approval.denied"}, headers=org.headers)).json()["items"]
    assert len(events) == 1 and events[0]["details"] == {"approval_id": denied, "reason": "no"}


async def test_a_decision_that_cannot_be_audited_is_not_made(client: Any, org: Org, monkeypatch: Any) -> None:
    from core.errors import ServiceUnavailable

    approval_id = await _escalate(client, org)

    async def refuse(event: Any) -> None:
        raise ServiceUnavailable("The audit trail is not accepting events; nothing was done.")

    monkeypatch.setattr(client.app.state.audit, "record", refuse)
    for verb in ("approve", "deny"):
        r = await client.post(f"{_base(org)}/{approval_id}/{verb}", headers=org.headers)
        assert_error(r, 503, "SERVICE_UNAVAILABLE")
    monkeypatch.undo()
    body = (await client.get(f"{_base(org)}/{approval_id}", headers=org.headers)).json()
    assert body["status"] == "PENDING" and body["decided_by"] is None
    assert (await client.post(f"{_base(org)}/{approval_id}/approve", headers=org.headers)).status_code == 200
