"""A management change that cannot be audited is not made (issue 12, audit defect).

Capability-token issue and revoke used to record their audit event after the token change had
committed: with the audit trail down, an issue answered 503 but left a stored token behind, and
a revocation took effect (in the database and, by the change bus, everywhere) unaudited. Every
change now hands its event to the audit sink inside its transaction, before the commit.
"""
from __future__ import annotations

from typing import Any

import pytest

from core.errors import ServiceUnavailable
from tests.conftest import Org, assert_error, make_key
from tests.tokens.helpers import active_manifest

TOKEN = {"uapk_id": "support-bot", "agent_id": "tool-7", "capabilities": ["crm:read"]}


def _audit_fails(client: Any, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every audit write of the app fails as when Redis or the queue refuses it; returns the
    events that were offered."""
    offered: list[Any] = []

    async def refuse(event: Any) -> None:
        offered.append(event)
        raise ServiceUnavailable("Audit trail unavailable (ConnectionError); nothing was done. Retry shortly.")

    monkeypatch.setattr(client.app.state.audit, "record", refuse)
    return offered


def _kind(event: Any) -> str:
    return event["kind"] if isinstance(event, dict) else event.kind  # type: ignore[no-any-return]


async def _tokens(client: Any, org: Org) -> list[dict[str, Any]]:
    r = await client.get(f"/api/v1/orgs/{org.org_id}/capability-tokens", headers=org.headers)
    assert r.status_code == 200, r.text
    return r.json()["items"]  # type: ignore[no-any-return]


async def test_a_token_issue_that_cannot_be_audited_stores_no_token(client: Any, org: Org,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    await active_manifest(client.app, org.org_id)
    agent = {"X-API-Key": await make_key(client, org, "agent")}
    offered = _audit_fails(client, monkeypatch)
    r = await client.post(f"/api/v1/orgs/{org.org_id}/capability-tokens", json=TOKEN, headers=org.headers)
    assert_error(r, 503, "SERVICE_UNAVAILABLE")
    r = await client.post("/api/v1/gateway/tokens", json=TOKEN, headers=agent)
    assert_error(r, 503, "SERVICE_UNAVAILABLE")
    assert [_kind(e) for e in offered] == ["capability_token.issued"] * 2
    monkeypatch.undo()
    assert await _tokens(client, org) == []  # neither issue was made


async def test_a_revocation_that_cannot_be_audited_does_not_take_effect(client: Any, org: Org,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    await active_manifest(client.app, org.org_id)
    base = f"/api/v1/orgs/{org.org_id}/capability-tokens"
    r = await client.post(base, json=TOKEN, headers=org.headers)
    assert r.status_code == 201, r.text
    issued = r.json()
    offered = _audit_fails(client, monkeypatch)
    assert_error(await client.post(f"{base}/{issued['token_id']}/revoke", headers=org.headers), 503,
                 "SERVICE_UNAVAILABLE")
    assert [_kind(e) for e in offered] == ["capability_token.revoked"]
    monkeypatch.undo()
    (row,) = await _tokens(client, org)
    assert row["revoked_at"] is None and row["revoked_by"] is None
    r = await client.post("/api/v1/capability-tokens/verify", json={"token": issued["token"]}, headers=org.headers)
    assert r.status_code == 200 and r.json()["valid"] is True, r.text
    # Once the audit trail is back, the revocation is made and audited.
    r = await client.post(f"{base}/{issued['token_id']}/revoke", headers=org.headers)
    assert r.status_code == 200 and r.json()["revoked_at"], r.text
    await client.app.state.audit.flush()
    events = (await client.get(f"/api/v1/orgs/{org.org_id}/audit/events", params={"kind": "capability_token.revoked"},
                               headers=org.headers)).json()["items"]
    assert [e["details"] for e in events] == [{"token_id": issued["token_id"]}]


async def test_a_manifest_approval_that_cannot_be_audited_is_not_made(client: Any, org: Org,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    base = f"/api/v1/orgs/{org.org_id}/manifests"
    doc = {"version": "1.0", "agent": {"id": "support-bot", "name": "Support Bot", "version": "1.0.0"},
           "capabilities": {"requested": ["email:send"]}}
    r = await client.post(base, json=doc, headers=org.headers)
    assert r.status_code == 201, r.text
    manifest_id = r.json()["manifest_id"]
    offered = _audit_fails(client, monkeypatch)
    assert_error(await client.post(f"{base}/{manifest_id}/approve", json={}, headers=org.headers), 503,
                 "SERVICE_UNAVAILABLE")
    assert [_kind(e) for e in offered] == ["manifest.approve"]
    monkeypatch.undo()
    r = await client.get(f"{base}/{manifest_id}", headers=org.headers)
    assert r.status_code == 200 and r.json()["status"] == "pending", r.text


async def test_api_key_changes_that_cannot_be_audited_are_not_made(client: Any, org: Org,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    base = f"/api/v1/orgs/{org.org_id}/api-keys"
    before = (await client.get(base, headers=org.headers)).json()["items"]
    victim = (await client.post(base, json={"name": "victim", "role": "viewer"}, headers=org.headers)).json()
    offered = _audit_fails(client, monkeypatch)
    r = await client.post(base, json={"name": "unaudited", "role": "viewer"}, headers=org.headers)
    assert_error(r, 503, "SERVICE_UNAVAILABLE")
    assert_error(await client.post(f"{base}/{victim['id']}/revoke", headers=org.headers), 503, "SERVICE_UNAVAILABLE")
    assert [_kind(e) for e in offered] == ["api_key.created", "api_key.revoked"]
    monkeypatch.undo()
    keys = (await client.get(base, headers=org.headers)).json()["items"]
    assert sorted(k["name"] for k in keys) == sorted([k["name"] for k in before] + ["victim"])
    (row,) = [k for k in keys if k["id"] == victim["id"]]
    assert "revoked_at" in row and row["revoked_at"] is None, row
    assert (await client.get(base, headers={"X-API-Key": victim["key"]})).status_code == 200  # still works
