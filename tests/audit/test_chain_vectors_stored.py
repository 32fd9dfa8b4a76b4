"""The chain vectors (tests/unit/test_chain_vectors.py) through the real paths: the database
writer stores exactly the vector hashes, and the verifier written from docs/audit.md alone
accepts a real export from the API and refuses it once an event is altered."""
from __future__ import annotations

import copy
import json
from typing import Any

from audit.chain import event_body
from audit.event import normalize
from audit.export import verify_export
from store import audit as repo
from store.runtime import Runtime
from tests.audit import independent_verifier as third_party
from tests.conftest import make_key
from tests.gateway.factories import action
from tests.unit.test_chain_vectors import EVENTS, HASHES, ORG


async def test_the_writer_stores_the_vector_hashes(settings: Any) -> None:
    """The database path (normalize, append under the head lock) hashes exactly as the vectors."""
    runtime = Runtime.build(settings)
    try:
        incoming = [{k: v for k, v in e.items() if k != "seq"} for e in copy.deepcopy(EVENTS)]
        async with runtime.sessions() as session, session.begin():
            n = await repo.append_events(session, ORG, [normalize(e) for e in incoming],
                                         keys=runtime.keys, issuer="bastion", checkpoint_every=3)
        assert n == 3
        stored = [row async for row in repo.iter_events(runtime.sessions, ORG)]
        async with runtime.sessions() as session:
            head = await repo.get_head(session, ORG)
        assert [r.hash for r in stored] == HASHES
        assert [event_body(r) for r in stored] == EVENTS
        assert head is not None and (head.seq, head.hash) == (3, HASHES[2])
        assert (await repo.verify_org(runtime.sessions, ORG, runtime.keys)).valid
    finally:
        await runtime.engine.dispose()
        if runtime.redis is not None:
            await runtime.redis.aclose()


async def _busy_org(client: Any, org: Any) -> None:
    """Management changes and gateway decisions of every outcome, through the API."""
    base = f"/api/v1/orgs/{org.org_id}"
    doc = {"version": "1.0", "agent": {"id": "support-bot", "name": "Support Bot", "version": "1.0.0"},
           "capabilities": {"requested": ["email:send", "stripe:refund"]},
           "constraints": {"require_human_approval": ["stripe:refund"]}}
    r = await client.post(f"{base}/manifests", json=doc, headers=org.headers)
    assert r.status_code == 201, r.text
    r = await client.post(f"{base}/manifests/{r.json()['manifest_id']}/approve", json={}, headers=org.headers)
    assert r.status_code == 200, r.text
    agent = {"X-API-Key": await make_key(client, org, "agent", ["support-bot"])}
    refund = action(tool="stripe", type="refund", amount=12.5, currency="EUR", params={"charge": "ch_é", "n": -0.0})
    outcomes = []
    for body in (action(), action(tool="crm", type="delete"), refund):
        r = await client.post("/api/v1/gateway/execute", json=body, headers=agent)
        assert r.status_code == 200, r.text
        outcomes.append(r.json()["decision"])
    assert outcomes == ["allow", "deny", "escalate"]
    approval_id = r.json()["approval_id"]
    r = await client.post(f"{base}/approvals/{approval_id}/approve", json={"notes": "ok ✓"}, headers=org.headers)
    assert r.status_code == 200, r.text
    await client.app.state.audit.flush()


async def test_the_independent_verifier_accepts_a_real_export(client: Any, org: Any) -> None:
    await _busy_org(client, org)
    r = await client.get(f"/api/v1/orgs/{org.org_id}/audit/export", headers=org.headers)
    assert r.status_code == 200, r.text
    lines = r.text.splitlines()
    jwks = (await client.get("/.well-known/jwks.json")).json()
    events = [json.loads(x) for x in lines if json.loads(x)["type"] == "event"]
    kinds = {e["event"]["kind"] for e in events}
    assert {"manifest.registered", "manifest.approve", "api_key.created", "gateway.execute", "approval.approved"} <= kinds
    theirs = third_party.verify_export(lines, jwks)
    assert theirs.valid and theirs.checked == len(events) >= 7, theirs
    assert verify_export(lines, client.app.state.runtime.keys.public_key).valid

    # The same verifier refuses the export once any event is altered (its hash left as it was).
    for i in (0, len(events) // 2, len(events) - 1):
        altered = [json.loads(x) for x in lines]
        target = [x for x in altered if x["type"] == "event"][i]
        target["event"]["request_id"] = f"forged-{i}"
        outcome = third_party.verify_export([json.dumps(x) for x in altered], jwks)
        assert not outcome.valid and "does not match its hash" in (outcome.problem or ""), outcome
