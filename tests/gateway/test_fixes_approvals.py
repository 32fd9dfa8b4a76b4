"""Issue 11, approvals and override tokens: regression tests through the HTTP API, on both
backends (SQLite embedded; PostgreSQL + Redis).

* item 3: an override token is bound to the whole action (tool, type, capability, params,
  amount, currency, description, every counterparty field), and the approver sees them all.
* item 7: an agent holds at most as many pending approvals as it could still use (its
  remaining daily quota, at most BASTION_MAX_PENDING_APPROVALS); the identical action joins
  its pending approval. Exact under concurrency, also across processes.
* item 10: the agent's poll shows the override token only to a key that may act as the agent.
* item 11: four eyes: the requesting key, and the user who owns it, may not decide (403).
* contract gap: once used, the agent's poll never returns the override token again
  (``override_status: USED``), even before the use reaches the database.
"""
from __future__ import annotations

import asyncio
import copy
import functools
from datetime import UTC
from typing import Any

import msgspec
import pytest

from core.settings import load_settings
from gateway.overrides import check_override, issue_override
from gateway.schemas import GatewayActionRequest
from policies.compile import ManifestSnapshot, OrgPolicySource, compile_org
from store.keystore import KeyStore
from store.quotas import MemoryQuotas
from tests.conftest import Org, assert_error, make_key
from tests.gateway.steps import Steps

UAPK_ID = "pay-bot"
AGENT_ID = "agent-1"
MANIFEST: dict[str, Any] = {
    "version": "1.0",
    "agent": {"id": UAPK_ID, "name": "Pay Bot", "version": "1.0.0"},
    "capabilities": {"requested": ["payments:transfer", "crm:read"]},
    "constraints": {"max_actions_per_hour": 1000, "max_actions_per_day": 1000,
                    "require_human_approval": ["payments:transfer"]},
}
TRANSFER: dict[str, Any] = {
    "type": "transfer", "tool": "payments", "params": {"iban": "DE89370400440532013000"},
    "amount": 250.0, "currency": "EUR", "description": "Invoice 2024-17",
}
ALICE: dict[str, Any] = {"name": "Alice GmbH", "jurisdiction": "DE", "email": "billing@alice.example"}


async def _manifest(client: Any, org: Org, **constraints: Any) -> None:
    doc = copy.deepcopy(MANIFEST)
    doc["constraints"].update(constraints)
    base = f"/api/v1/orgs/{org.org_id}/manifests"
    r = await client.post(base, json=doc, headers=org.headers)
    assert r.status_code == 201, r.text
    r = await client.post(f"{base}/{r.json()['manifest_id']}/approve", json={}, headers=org.headers)
    assert r.status_code == 200 and r.json()["status"] == "active", r.text


def _body(action: dict[str, Any] | None = None, counterparty: dict[str, Any] | None = None,
          token: str | None = None, agent_id: str = AGENT_ID) -> dict[str, Any]:
    body: dict[str, Any] = {"uapk_id": UAPK_ID, "agent_id": agent_id, "action": action or TRANSFER}
    if counterparty is not None:
        body["counterparty"] = counterparty
    if token is not None:
        body["override_token"] = token
    return body


async def _execute(client: Any, key: dict[str, str], **kw: Any) -> dict[str, Any]:
    r = await client.post("/api/v1/gateway/execute", json=_body(**kw), headers=key)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _codes(body: dict[str, Any]) -> list[str]:
    return [r["code"] for r in body["reasons"]]


def _approvals(org: Org) -> str:
    return f"/api/v1/orgs/{org.org_id}/approvals"


async def _agent(client: Any, org: Org) -> dict[str, str]:
    return {"X-API-Key": await make_key(client, org, "agent", uapk_ids=[UAPK_ID])}


async def _approve(client: Any, org: Org, approval_id: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    r = await client.post(f"{_approvals(org)}/{approval_id}/approve", json={}, headers=headers or org.headers)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


# --- item 3: the token is bound to the whole action ------------------------------------------
async def test_token_for_alice_de_does_not_allow_mallory_ru(client: Any, org: Org) -> None:
    await _manifest(client, org)
    agent = await _agent(client, org)
    body = await _execute(client, agent, counterparty=ALICE)
    assert body["decision"] == "escalate", body
    approval_id = body["approval_id"]
    # The approver sees every field the token will be bound to.
    seen = (await client.get(f"{_approvals(org)}/{approval_id}", headers=org.headers)).json()
    assert seen["capability"] == "payments:transfer"
    assert {k: seen["action"][k] for k in TRANSFER} == TRANSFER
    assert {k: v for k, v in seen["counterparty"].items() if v is not None} == ALICE
    listed = (await client.get(_approvals(org), headers=org.headers)).json()["items"]
    assert listed[0]["counterparty"] == seen["counterparty"]
    token = (await _approve(client, org, approval_id))["override_token"]

    for other in (
        {"name": "Mallory Ltd", "jurisdiction": "RU", "email": "billing@alice.example"},
        {**ALICE, "jurisdiction": "RU"},
        {**ALICE, "name": "Mallory Ltd"},
        {**ALICE, "email": "billing@mallory.example"},
        {**ALICE, "domain": "mallory.example"},
        {**ALICE, "id": "cp_666"},
        {"name": "Alice GmbH", "jurisdiction": "DE"},  # a field left out
        None,  # no counterparty at all
    ):
        denied = await _execute(client, agent, counterparty=other, token=token)
        assert denied["decision"] == "deny" and _codes(denied) == ["override_token_action_mismatch"], (other, denied)
    # None of that spent it: the approved action itself is allowed, once. Field order and
    # explicit nulls do not matter.
    reordered = {"jurisdiction": "DE", "id": None, "email": ALICE["email"], "name": ALICE["name"]}
    allowed = await _execute(client, agent, counterparty=reordered, token=token)
    assert allowed["decision"] == "allow" and _codes(allowed) == ["override_token_accepted"], allowed


async def test_changed_description_or_amount_is_refused(client: Any, org: Org) -> None:
    await _manifest(client, org)
    agent = await _agent(client, org)
    body = await _execute(client, agent, counterparty=ALICE)
    token = (await _approve(client, org, body["approval_id"]))["override_token"]
    for action in (
        {**TRANSFER, "description": "Invoice 2024-17 (and the rest of the balance)"},
        {k: v for k, v in TRANSFER.items() if k != "description"},
        {**TRANSFER, "amount": 250000.0},
        {**TRANSFER, "currency": "USD"},
        {**TRANSFER, "params": {"iban": "RU0204452560040702810412345678901"}},
    ):
        denied = await _execute(client, agent, action=action, counterparty=ALICE, token=token)
        assert denied["decision"] == "deny" and _codes(denied) == ["override_token_action_mismatch"], (action, denied)
    assert (await _execute(client, agent, counterparty=ALICE, token=token))["decision"] == "allow"


async def test_token_for_transfer_does_not_allow_wire_all_funds(client: Any, org: Org) -> None:
    await _manifest(client, org)
    agent = await _agent(client, org)
    body = await _execute(client, agent, counterparty=ALICE)
    token = (await _approve(client, org, body["approval_id"]))["override_token"]
    # Same capability, another type: refused, whether as a bad request (an explicit capability
    # that is not tool:type) or as a token for another action. Never allowed.
    wire = {**TRANSFER, "type": "wire_all_funds", "capability": "payments:transfer"}
    r = await client.post("/api/v1/gateway/execute", json=_body(wire, ALICE, token), headers=agent)
    if r.status_code == 200:
        assert r.json()["decision"] == "deny" and _codes(r.json()) == ["override_token_action_mismatch"], r.json()
    else:
        assert r.status_code == 400, r.text
    # Another tool under the same capability, likewise.
    other_tool = {**TRANSFER, "tool": "treasury", "capability": "payments:transfer"}
    r = await client.post("/api/v1/gateway/execute", json=_body(other_tool, ALICE, token), headers=agent)
    if r.status_code == 200:
        assert r.json()["decision"] == "deny" and _codes(r.json()) == ["override_token_action_mismatch"], r.json()
    else:
        assert r.status_code == 400, r.text
    assert (await _execute(client, agent, counterparty=ALICE, token=token))["decision"] == "allow"


async def test_type_and_tool_are_bound_in_the_decision(tmp_path: Any) -> None:
    """Below the HTTP layer's capability rule: same capability, another type or tool."""
    settings = load_settings(env={}, data_dir=tmp_path)
    keys = KeyStore.load_or_create(tmp_path / "keys.json")
    p = Steps(MemoryQuotas(), functools.partial(check_override, keys, settings))
    snapshot = ManifestSnapshot(
        manifest_id="m-bot", uapk_id="bot", manifest_hash="sha256:x", version="1.0.0", status="active",
        approved=("payments:transfer",), require_human_approval=("payments:transfer",),
    )
    o = compile_org(OrgPolicySource("org-1", 1, (snapshot,)), default_per_hour=100, default_per_day=100)
    token, _, _ = issue_override(
        keys, settings, approval_id="appr-1", org_id="org-1", uapk_id="bot", agent_id="agent-1",
        capability="payments:transfer", tool="payments", type="transfer", params={}, amount=None, currency=None,
    )

    def req(tool: str, type_: str) -> GatewayActionRequest:
        return msgspec.convert({"uapk_id": "bot", "agent_id": "agent-1", "override_token": token,
                                "action": {"tool": tool, "type": type_}}, GatewayActionRequest)

    for tool, type_ in (("payments", "wire_all_funds"), ("treasury", "transfer")):
        d = await p.decide(req(tool, type_), o, spend=False, capability="payments:transfer")
        assert d.decision == "deny" and d.reasons[0].code == "override_token_action_mismatch", (tool, type_, d.reasons)
    d = await p.decide(req("payments", "transfer"), o, spend=False, capability="payments:transfer")
    assert d.decision == "allow" and d.reasons[0].code == "override_token_accepted", d.reasons


# --- item 7: an agent cannot flood its approvers -----------------------------------------------
def _transfer(n: int) -> dict[str, Any]:
    return {**TRANSFER, "params": {"iban": "DE89370400440532013000", "invoice": n}}


async def _pending(client: Any, org: Org) -> list[str]:
    r = await client.get(_approvals(org), params={"status": "pending", "limit": 100}, headers=org.headers)
    assert r.status_code == 200, r.text
    return [a["approval_id"] for a in r.json()["items"]]


async def test_pending_approvals_bounded_by_the_remaining_daily_quota(client: Any, org: Org) -> None:
    """The issue's case: 8 escalating executes with max_actions_per_day 2 opened 8 approvals."""
    await _manifest(client, org, max_actions_per_day=2)
    agent = await _agent(client, org)
    results = await asyncio.gather(*(_execute(client, agent, action=_transfer(i)) for i in range(8)))
    escalated = [b for b in results if b["decision"] == "escalate"]
    denied = [b for b in results if b["decision"] == "deny"]
    assert len(escalated) == 2 and len({b["approval_id"] for b in escalated}) == 2, results
    assert len(denied) == 6 and all(_codes(b) == ["too_many_pending_approvals"] for b in denied), denied
    assert all(b["approval_id"] is None for b in denied)
    details = denied[0]["reasons"][0]["details"]
    assert details["pending"] == 2 and details["limit"] == 2 and details["day_remaining"] == 2
    assert sorted(await _pending(client, org)) == sorted(b["approval_id"] for b in escalated)

    # Spending quota lowers the bound: approve one and use it (1 of 2 spent) -> 1 pending at most,
    # and one is still pending, so a new action is refused...
    token = (await _approve(client, org, escalated[0]["approval_id"]))["override_token"]
    first = results.index(escalated[0])
    assert (await _execute(client, agent, action=_transfer(first), token=token))["decision"] == "allow"
    assert _codes(await _execute(client, agent, action=_transfer(100))) == ["too_many_pending_approvals"]
    # ...until a human decides it.
    r = await client.post(f"{_approvals(org)}/{escalated[1]['approval_id']}/deny", json={}, headers=org.headers)
    assert r.status_code == 200, r.text
    assert (await _execute(client, agent, action=_transfer(100)))["decision"] == "escalate"


async def test_pending_approvals_bounded_by_the_setting(settings_factory: Any) -> None:
    from bastion.app import create_app
    from tests.conftest import bootstrap_org, serve_app

    async with serve_app(create_app(settings_factory(max_pending_approvals=3))) as c:
        org = await bootstrap_org(c.app)
        await _manifest(c, org)  # 1000 actions a day: the setting binds first
        agent = await _agent(c, org)
        results = await asyncio.gather(*(_execute(c, agent, action=_transfer(i)) for i in range(12)))
        assert [b["decision"] for b in results].count("escalate") == 3, results
        denied = [b for b in results if b["decision"] == "deny"]
        assert len(denied) == 9 and {_codes(b)[0] for b in denied} == {"too_many_pending_approvals"}
        assert denied[0]["reasons"][0]["details"]["limit"] == 3
        # Every agent_id instance of the manifest shares the bound.
        assert _codes(await _execute(c, agent, action=_transfer(50), agent_id="agent-2")) == ["too_many_pending_approvals"]
        # Expired approvals do not count.
        await _expire_all(c)
        assert (await _execute(c, agent, action=_transfer(51)))["decision"] == "escalate"


async def _expire_all(client: Any) -> None:
    from datetime import datetime, timedelta

    from sqlalchemy import update

    from store.models import Approval

    async with client.app.state.runtime.sessions() as s, s.begin():
        await s.execute(update(Approval).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))


def test_max_pending_approvals_setting() -> None:
    from core.settings import ConfigError

    assert load_settings(env={}).max_pending_approvals == 20
    assert load_settings(env={"BASTION_MAX_PENDING_APPROVALS": "5"}).max_pending_approvals == 5
    for bad in ("0", "-1", "x"):
        with pytest.raises(ConfigError, match="BASTION_MAX_PENDING_APPROVALS"):
            load_settings(env={"BASTION_MAX_PENDING_APPROVALS": bad})


async def test_repeated_identical_escalation_joins_the_pending_approval(settings_factory: Any) -> None:
    from bastion.app import create_app
    from tests.conftest import bootstrap_org, serve_app

    async with serve_app(create_app(settings_factory(max_pending_approvals=2))) as c:
        org = await bootstrap_org(c.app)
        await _manifest(c, org)
        agent = await _agent(c, org)
        results = await asyncio.gather(*(_execute(c, agent, counterparty=ALICE) for _ in range(10)))
        assert {b["decision"] for b in results} == {"escalate"}, results
        ids = {b["approval_id"] for b in results}
        assert len(ids) == 1 and await _pending(c, org) == list(ids)
        joined = ids.pop()
        # Anything else is another action: another approval (same order of fields or not).
        other = await _execute(c, agent, counterparty={**ALICE, "jurisdiction": "AT"})
        assert other["decision"] == "escalate" and other["approval_id"] != joined
        # At the bound, a new action is refused, but a repeat still joins (it adds nothing).
        assert _codes(await _execute(c, agent, action=_transfer(1), counterparty=ALICE)) == ["too_many_pending_approvals"]
        again = await _execute(c, agent, counterparty={"jurisdiction": "DE", **ALICE})
        assert again["decision"] == "escalate" and again["approval_id"] == joined
        # Another agent instance with the same action is another action (it is bound to its agent).
        assert _codes(await _execute(c, agent, counterparty=ALICE, agent_id="agent-2")) == ["too_many_pending_approvals"]
        # Once decided, the same action escalates afresh.
        assert (await c.post(f"{_approvals(org)}/{joined}/deny", json={}, headers=org.headers)).status_code == 200
        fresh = await _execute(c, agent, counterparty=ALICE)
        assert fresh["decision"] == "escalate" and fresh["approval_id"] not in (joined, other["approval_id"])


async def test_the_bound_holds_across_processes(settings_factory: Any) -> None:
    """Two gateway apps (as two processes would) on one database: the database lock, not only
    the in-process one, keeps the bound and the joining exact."""
    from bastion.app import create_app
    from tests.conftest import bootstrap_org, serve_app

    settings = settings_factory(max_pending_approvals=4)
    async with serve_app(create_app(settings)) as a, serve_app(create_app(settings)) as b:
        org = await bootstrap_org(a.app)
        await _manifest(a, org)
        agent = await _agent(a, org)
        calls = [_execute(a if i % 2 else b, agent, action=_transfer(i)) for i in range(12)]
        calls += [_execute(b if i % 2 else a, agent, counterparty=ALICE) for i in range(8)]
        results = await asyncio.gather(*calls)
        distinct, same = results[:12], results[12:]
        assert all(r["decision"] in ("escalate", "deny") for r in results)
        # The identical action: one approval, shared by every repeat that got in.
        same_ids = {r["approval_id"] for r in same if r["decision"] == "escalate"}
        assert len(same_ids) <= 1
        opened = {r["approval_id"] for r in results if r["decision"] == "escalate"}
        assert len(opened) == 4 and sorted(await _pending(a, org)) == sorted(opened), results
        assert {_codes(r)[0] for r in results if r["decision"] == "deny"} == {"too_many_pending_approvals"}
        assert len([r for r in distinct if r["decision"] == "escalate"]) + len(same_ids) == 4


async def test_refused_escalation_is_audited_as_a_deny(client: Any, org: Org) -> None:
    await _manifest(client, org, max_actions_per_day=1)
    agent = await _agent(client, org)
    first = await _execute(client, agent, action=_transfer(1))
    second = await _execute(client, agent, action=_transfer(2))
    assert first["decision"] == "escalate" and _codes(second) == ["too_many_pending_approvals"]
    await client.app.state.audit.flush()
    r = await client.get(f"/api/v1/orgs/{org.org_id}/audit/events", params={"kind": "gateway.execute", "limit": 100},
                         headers=org.headers)
    assert r.status_code == 200, r.text
    events = {e["interaction_id"]: e for e in r.json()["items"]}
    assert events[first["interaction_id"]]["decision"] == "escalate"
    refused = events[second["interaction_id"]]
    assert refused["decision"] == "deny" and [x["code"] for x in refused["reasons"]] == ["too_many_pending_approvals"]


async def test_escalation_that_cannot_be_audited_opens_no_approval(client: Any, org: Org, monkeypatch: Any) -> None:
    from core.errors import ServiceUnavailable

    await _manifest(client, org)
    agent = await _agent(client, org)

    async def refuse(event: Any) -> None:
        raise ServiceUnavailable("The audit trail is not accepting events; nothing was done.")

    monkeypatch.setattr(client.app.state.audit, "record", refuse)
    r = await client.post("/api/v1/gateway/execute", json=_body(counterparty=ALICE), headers=agent)
    assert r.status_code == 503, r.text
    monkeypatch.undo()
    assert await _pending(client, org) == []


# --- item 10: only a key that may act as the agent reads its override token -------------------
async def test_only_keys_that_may_act_as_the_agent_read_the_override_token(client: Any, org: Org) -> None:
    await _manifest(client, org)
    agent = await _agent(client, org)
    body = await _execute(client, agent, counterparty=ALICE)
    approval_id = body["approval_id"]
    token = (await _approve(client, org, approval_id))["override_token"]
    poll = f"/api/v1/approvals/{approval_id}"
    for role in ("viewer", "policy_author", "approver"):
        key = {"X-API-Key": await make_key(client, org, role, name=f"{role}-poller")}
        r = await client.get(poll, headers=key)
        assert r.status_code == 200, (role, r.text)
        assert r.json()["status"] == "APPROVED" and r.json()["override_token"] is None, role
        assert token not in r.text, role
    # A gateway role restricted to this agent, or unrestricted, gets it.
    for role, uapk_ids in (("agent", [UAPK_ID]), ("agent", None), ("admin", None), ("owner", None)):
        key = {"X-API-Key": await make_key(client, org, role, uapk_ids=uapk_ids, name=f"{role}-{uapk_ids}")}
        r = await client.get(poll, headers=key)
        assert r.status_code == 200 and r.json()["override_token"] == token, (role, uapk_ids, r.text)
    # Restricted to another agent: the approval does not exist for it.
    other = {"X-API-Key": await make_key(client, org, "agent", uapk_ids=["other-bot"], name="other")}
    assert (await client.get(poll, headers=other)).status_code == 404
    # And the viewer's view is otherwise the agent's view.
    viewer = {"X-API-Key": await make_key(client, org, "viewer", name="viewer-2")}
    seen = (await client.get(poll, headers=viewer)).json()
    full = (await client.get(poll, headers=agent)).json()
    assert {k: v for k, v in seen.items() if k != "override_token"} == {k: v for k, v in full.items() if k != "override_token"}


# --- item 11: four eyes ------------------------------------------------------------------------
async def _session(client: Any, org: Org) -> dict[str, str]:
    r = await client.post("/api/v1/auth/login", json={"email": org.email, "password": org.password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def _refused(client: Any, org: Org, approval_id: str, headers: dict[str, str]) -> None:
    for verb in ("approve", "deny"):
        r = await client.post(f"{_approvals(org)}/{approval_id}/{verb}", json={}, headers=headers)
        body = assert_error(r, 403, "PERMISSION_DENIED")
        assert "four-eyes" in body["message"].lower(), body
    seen = (await client.get(f"{_approvals(org)}/{approval_id}", headers=headers)).json()
    assert seen["status"] == "PENDING" and seen["decided_by"] is None


async def test_the_requesting_key_may_not_decide_its_approval(client: Any, org: Org) -> None:
    """The issue's case: an owner key escalates, approves its own escalation, executes."""
    await _manifest(client, org)
    owner_key = org.headers  # the bootstrap key (role owner: it may call the gateway)
    body = await _execute(client, owner_key, counterparty=ALICE)
    assert body["decision"] == "escalate", body
    approval_id = body["approval_id"]
    await _refused(client, org, approval_id, owner_key)
    # Its owner (the user who created the bootstrap key) may not either, with a session.
    await _refused(client, org, approval_id, await _session(client, org))
    # Another approver may.
    approver = {"X-API-Key": await make_key(client, org, "approver", name="second-pair")}
    token = (await _approve(client, org, approval_id, approver))["override_token"]
    assert (await _execute(client, owner_key, counterparty=ALICE, token=token))["decision"] == "allow"


async def test_the_user_who_owns_the_requesting_key_may_not_decide(client: Any, org: Org) -> None:
    await _manifest(client, org)
    session = await _session(client, org)
    # An agent key created by the owner's session: owned by owner@acme.com.
    r = await client.post(f"/api/v1/orgs/{org.org_id}/api-keys", json={"name": "owned-agent", "role": "agent"},
                          headers=session)
    assert r.status_code == 201, r.text
    agent = {"X-API-Key": r.json()["key"]}
    first = (await _execute(client, agent, action=_transfer(1)))["approval_id"]
    second = (await _execute(client, agent, action=_transfer(2)))["approval_id"]
    await _refused(client, org, first, session)
    # Other credentials may decide: the bootstrap key (not the requester, not a user).
    assert (await client.post(f"{_approvals(org)}/{first}/approve", json={}, headers=org.headers)).status_code == 200
    approver = {"X-API-Key": await make_key(client, org, "approver", name="another")}
    r = await client.post(f"{_approvals(org)}/{second}/deny", json={"reason": "no"}, headers=approver)
    assert r.status_code == 200 and r.json()["status"] == "DENIED", r.text


async def test_four_eyes_can_be_turned_off(settings_factory: Any) -> None:
    from bastion.app import create_app
    from tests.conftest import bootstrap_org, serve_app

    assert load_settings(env={}).approval_four_eyes is True
    assert load_settings(env={"BASTION_APPROVAL_FOUR_EYES": "false"}).approval_four_eyes is False
    async with serve_app(create_app(settings_factory(approval_four_eyes=False))) as c:
        org = await bootstrap_org(c.app)
        await _manifest(c, org)
        body = await _execute(c, org.headers, counterparty=ALICE)
        token = (await _approve(c, org, body["approval_id"], org.headers))["override_token"]
        assert (await _execute(c, org.headers, counterparty=ALICE, token=token))["decision"] == "allow"


# --- contract gap: a used override token is never polled again ----------------------------------
def _late_database(monkeypatch: Any) -> None:
    """The use reaches the database late (it is recorded off the response path): here never."""
    import gateway.approvals

    async def never(*args: Any, **kwargs: Any) -> None:
        return None

    monkeypatch.setattr(gateway.approvals, "on_override_consumed", never)


async def test_poll_never_returns_a_used_token(client: Any, org: Org, monkeypatch: Any) -> None:
    await _manifest(client, org)
    agent = await _agent(client, org)
    body = await _execute(client, agent, counterparty=ALICE)
    approval_id = body["approval_id"]
    poll = f"/api/v1/approvals/{approval_id}"
    pending = (await client.get(poll, headers=agent)).json()
    assert pending["override_status"] is None and pending["override_token"] is None
    token = (await _approve(client, org, approval_id))["override_token"]
    polled = (await client.get(poll, headers=agent)).json()
    assert polled["override_status"] == "UNUSED" and polled["override_token"] == token

    _late_database(monkeypatch)
    assert (await _execute(client, agent, counterparty=ALICE, token=token))["decision"] == "allow"
    polled = (await client.get(poll, headers=agent)).json()
    # Still APPROVED (the SDK compares the status), but the token is gone and says why.
    assert polled["status"] == "APPROVED" and polled["override_token"] is None, polled
    assert polled["override_status"] == "USED"


@pytest.mark.parametrize("backend", ["postgres"])  # replicas share PostgreSQL and Redis
async def test_poll_on_another_process_never_returns_a_used_token(settings_factory: Any, monkeypatch: Any) -> None:
    """Spent on one gateway process, polled on another before the database or the change bus
    could tell it: the single-use marker in Redis does."""
    from bastion.app import create_app
    from tests.conftest import bootstrap_org, serve_app

    settings = settings_factory()
    async with serve_app(create_app(settings)) as a, serve_app(create_app(settings)) as b:
        org = await bootstrap_org(a.app)
        await _manifest(a, org)
        agent = await _agent(a, org)
        body = await _execute(a, agent, counterparty=ALICE)
        poll = f"/api/v1/approvals/{body['approval_id']}"
        token = (await _approve(a, org, body["approval_id"]))["override_token"]
        assert (await b.get(poll, headers=agent)).json()["override_token"] == token
        _late_database(monkeypatch)  # and so nothing is announced on the change bus either
        assert (await _execute(a, agent, counterparty=ALICE, token=token))["decision"] == "allow"
        polled = (await b.get(poll, headers=agent)).json()
        assert polled["status"] == "APPROVED" and polled["override_token"] is None, polled
        assert polled["override_status"] == "USED"


async def test_poll_hides_an_expired_token(client: Any, org: Org) -> None:
    from datetime import datetime, timedelta

    from sqlalchemy import update

    from store.models import Approval

    await _manifest(client, org)
    agent = await _agent(client, org)
    body = await _execute(client, agent, counterparty=ALICE)
    await _approve(client, org, body["approval_id"])
    async with client.app.state.runtime.sessions() as s, s.begin():
        await s.execute(update(Approval).where(Approval.id == body["approval_id"])
                        .values(override_expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    polled = (await client.get(f"/api/v1/approvals/{body['approval_id']}", headers=agent)).json()
    assert polled["status"] == "APPROVED" and polled["override_token"] is None
    assert polled["override_status"] == "EXPIRED"
