"""Issue 11 fixes of the audit trail.

Coverage (security item 5): a database writer who rewrites history, recomputes every later
hash and the head and deletes the checkpoints from there on must not get ``valid: true``,
online or offline; honest chains (long ones, late events, restarts) must always verify.
"""
from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, update

from audit.chain import ZERO_HASH, chain_hash, event_body
from audit.checkpoint import verify_checkpoint
from audit.event import build_event, normalize, params_digest, parse_ts
from audit.export import verify_export
from audit.verify import VerifyResult
from bastion.app import create_app
from core.clock import utcnow
from store import audit as repo
from store.models import AuditCheckpoint, AuditEvent, AuditHead
from tests.audit.helpers import checkpoints, event, rows, running_sink
from tests.conftest import Org, bootstrap_org, serve_app


# --- helpers ---------------------------------------------------------------------------
async def _app(settings_factory: Any, every: int) -> AsyncIterator[tuple[Any, Org]]:
    async with serve_app(create_app(settings_factory(audit_checkpoint_every=every))) as c:
        yield c, await bootstrap_org(c.app)


@pytest.fixture
async def every10(settings_factory: Any) -> AsyncIterator[tuple[Any, Org]]:
    async for x in _app(settings_factory, 10):
        yield x


@pytest.fixture
async def every100(settings_factory: Any) -> AsyncIterator[tuple[Any, Org]]:
    async for x in _app(settings_factory, 100):
        yield x


async def _record(client: Any, org: Org, times: list[datetime | None]) -> None:
    """One gateway decision event per entry, created at that time (None: now), in this order."""
    sink = client.app.state.audit
    for i, t in enumerate(times):
        await sink.record(build_event(org_id=org.org_id, kind="gateway.execute", actor="api_key:k", uapk_id="bot",
                                      capability="crm:read", decision="allow", request_id=f"r{i}",
                                      params={"i": i}, has_params=True, created_at=t))
    await sink.flush()


async def _exec(client: Any, *stmts: Any) -> None:
    async with client.app.state.runtime.sessions() as s, s.begin():
        for st in stmts:
            await s.execute(st)


async def _rewrite_history(client: Any, org: Org, seq: int, *, resign: bool = False) -> None:
    """The attack: change the decision at ``seq``, recompute every later hash and the head,
    delete the checkpoints from there on. ``resign``: also move the head's checkpoint
    bookkeeping back, so that the server itself signs the rewritten head again."""
    stored = await rows(client.app.state.runtime, org.org_id)
    await _exec(client, update(AuditEvent).where(AuditEvent.org_id == org.org_id, AuditEvent.seq == seq)
                .values(decision="deny"))
    stored = await rows(client.app.state.runtime, org.org_id)
    prev = stored[seq - 2].hash if seq > 1 else ZERO_HASH
    stmts: list[Any] = []
    for r in stored[seq - 1:]:
        prev = chain_hash(prev, event_body(r))
        stmts.append(update(AuditEvent).where(AuditEvent.id == r.id).values(hash=prev))
    stmts.append(update(AuditHead).where(AuditHead.org_id == org.org_id).values(seq=stored[-1].seq, hash=prev))
    stmts.append(delete(AuditCheckpoint).where(AuditCheckpoint.org_id == org.org_id, AuditCheckpoint.seq >= seq))
    await _exec(client, *stmts)
    if resign:
        kept = [c.seq for c in await checkpoints(client.app.state.runtime, org.org_id)]
        await _exec(client, update(AuditHead).where(AuditHead.org_id == org.org_id).values(
            checkpoint_seq=max(kept, default=0), checkpoint_at=datetime(2000, 1, 1, tzinfo=UTC)))


async def _verify(client: Any, org: Org) -> dict[str, Any]:
    r = await client.get(f"/api/v1/orgs/{org.org_id}/audit/verify", headers=org.headers)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def _export(client: Any, org: Org, **params: str) -> list[str]:
    r = await client.get(f"/api/v1/orgs/{org.org_id}/audit/export", params=params, headers=org.headers)
    assert r.status_code == 200, r.text
    return r.text.splitlines()


def _offline(client: Any, lines: list[str]) -> VerifyResult:
    return verify_export(lines, client.app.state.runtime.keys.public_key)


async def _cli_verify(client: Any, lines: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    jwks = tmp_path / "jwks.json"
    jwks.write_text((await client.get("/.well-known/jwks.json")).text)
    f = tmp_path / "export.jsonl"
    f.write_text("\n".join(lines) + "\n")
    return subprocess.run([sys.executable, "-m", "bastion.cli", "audit", "verify", str(f), "--jwks", str(jwks)],
                          capture_output=True, text=True, timeout=60)


# --- the attack ------------------------------------------------------------------------
async def test_rewritten_history_without_its_checkpoints_is_caught(every10: Any, tmp_path: Path) -> None:
    """The issue's reproduction: 25 decisions (checkpoint every 10), the 7th rewritten."""
    client, org = every10
    await _record(client, org, [None] * 25)
    first = (await rows(client.app.state.runtime, org.org_id))[0]
    await _rewrite_history(client, org, 7)
    v = await _verify(client, org)
    assert v["valid"] is False, v
    assert "events" in v["problem"] and "checkpoints were deleted" in v["problem"], v
    assert v["first_invalid_event_id"] == first.event_id  # the stretch with no checkpoint starts there
    lines = await _export(client, org)
    res = _offline(client, lines)
    assert not res.valid and "checkpoint" in (res.problem or ""), res
    cli = await _cli_verify(client, lines, tmp_path)
    assert cli.returncode == 1 and "INVALID" in cli.stderr, cli.stderr


async def test_rewritten_history_is_caught_even_when_the_server_signs_it_again(every10: Any) -> None:
    """A careful attacker also rewinds the head's checkpoint bookkeeping, so the writer and the
    export sign the rewritten head: the new checkpoint covers too many events."""
    client, org = every10
    await _record(client, org, [None] * 25)
    await _rewrite_history(client, org, 7, resign=True)
    await client.app.state.audit.flush()
    res = _offline(client, await _export(client, org))  # the export signs the rewritten head
    assert not res.valid and "at least every 10 events" in (res.problem or ""), res
    v = await _verify(client, org)
    assert v["valid"] is False and "at least every 10 events" in v["problem"], v


async def test_rewritten_recent_burst_older_than_the_interval_is_caught(every100: Any, tmp_path: Path) -> None:
    """Fewer events than BASTION_AUDIT_CHECKPOINT_EVERY: the missing time-based checkpoint
    gives it away (the events are an hour old and have none)."""
    client, org = every100
    hour_ago = utcnow() - timedelta(hours=1)
    await _record(client, org, [hour_ago + timedelta(seconds=i) for i in range(20)])
    stored = await rows(client.app.state.runtime, org.org_id)
    target = next(r.seq for r in stored if r.request_id == "r5")
    await _rewrite_history(client, org, target)
    v = await _verify(client, org)
    assert v["valid"] is False and "no signed checkpoint" in v["problem"], v
    lines = await _export(client, org)
    res = _offline(client, lines)
    assert not res.valid and "no signed checkpoint" in (res.problem or ""), res
    assert (await _cli_verify(client, lines, tmp_path)).returncode == 1


async def test_rewritten_stretch_longer_than_the_interval_is_caught_when_signed_again(every100: Any) -> None:
    """30 events over 15 minutes: one checkpoint cannot cover them all."""
    client, org = every100
    base = utcnow() - timedelta(hours=2)
    await _record(client, org, [base + timedelta(seconds=30 * i) for i in range(30)])
    assert (await _verify(client, org))["valid"]
    stored = await rows(client.app.state.runtime, org.org_id)
    await _rewrite_history(client, org, next(r.seq for r in stored if r.request_id == "r3"), resign=True)
    res = _offline(client, await _export(client, org))
    assert not res.valid and "s of activity" in (res.problem or ""), res
    v = await _verify(client, org)
    assert v["valid"] is False and "s of activity" in v["problem"], v


# --- honest chains always verify -------------------------------------------------------
async def test_honest_chain_longer_than_the_checkpoint_interval_verifies(every10: Any, tmp_path: Path) -> None:
    client, org = every10
    before = len(await rows(client.app.state.runtime, org.org_id))
    await _record(client, org, [None] * (37 if (before + 37) % 10 else 38))  # end between checkpoints
    v = await _verify(client, org)
    # The last events (after the newest checkpoint, younger than the interval) are fine.
    assert v["valid"] is True and v["last_seq"] - v["last_checkpoint"]["seq"] > 0, v
    lines = await _export(client, org)
    assert _offline(client, lines).valid
    cli = await _cli_verify(client, lines, tmp_path)
    assert cli.returncode == 0, cli.stderr
    window = await _export(client, org, to=(await rows(client.app.state.runtime, org.org_id))[-3].created_at)
    assert _offline(client, window).valid  # a bounded export may end between checkpoints


async def test_late_and_out_of_order_events_keep_the_chain_verifiable(every10: Any) -> None:
    """Events reach the writer late (a stream backlog after an outage) and out of order: the
    writer closes a stretch before an event that would widen it beyond the interval, and signs
    at once what is already due."""
    client, org = every10
    now = utcnow()
    times: list[datetime | None] = []
    for i in range(40):
        times.append(None if i % 3 == 0 else now - timedelta(hours=3) + timedelta(minutes=7 * i)
                     if i % 3 == 1 else now - timedelta(days=1, seconds=i))
    await _record(client, org, times)
    v = await _verify(client, org)
    assert v["valid"] is True, v
    assert _offline(client, await _export(client, org)).valid
    # Every stretch spans at most the interval, and no stretch holds more than 10 events.
    cps = sorted({c.seq for c in await checkpoints(client.app.state.runtime, org.org_id)})
    stored = await rows(client.app.state.runtime, org.org_id)
    bounds = [0, *cps]
    for lo, hi in zip(bounds, bounds[1:]):
        times_in = [parse_ts(r.created_at) for r in stored[lo:hi]]
        assert hi - lo <= 10 and (max(times_in) - min(times_in)).total_seconds() <= 60


async def test_a_checkpoint_is_due_an_interval_after_the_oldest_unsigned_event(settings_factory: Any) -> None:
    """An event created long ago reaches the writer right after a checkpoint: it is signed in
    the same append, not a whole interval later."""
    async with running_sink(settings_factory(audit_checkpoint_every=1000), tick=60.0) as (runtime, sink):
        await sink.record(event("org-late", 1))
        await sink.flush()
        await repo.checkpoint_now(runtime.sessions, "org-late", runtime.keys, "bastion")
        await sink.record(event("org-late", 2, created_at=utcnow() - timedelta(minutes=5)))
        await sink.flush()
        assert [c.seq for c in await checkpoints(runtime, "org-late")] == [1, 2]


async def test_stop_signs_every_open_stretch(settings_factory: Any) -> None:
    settings = settings_factory(audit_checkpoint_every=1000)
    async with running_sink(settings, tick=60.0, checkpoint_age=3600.0) as (runtime, sink):
        for i in range(3):
            await sink.record(event("org-stop", i))
        await sink.flush()
        assert await checkpoints(runtime, "org-stop") == []  # not due for an hour
    async with running_sink(settings, tick=60.0) as (runtime, _):
        assert [c.seq for c in await checkpoints(runtime, "org-stop")] == [3]
        assert (await repo.verify_org(runtime.sessions, "org-stop", runtime.keys)).valid


async def test_start_signs_what_a_dead_writer_left_due(settings_factory: Any) -> None:
    settings = settings_factory(audit_checkpoint_every=1000)
    async with running_sink(settings, tick=60.0, checkpoint_age=3600.0) as (runtime, sink):
        for i in range(3):
            await sink.record(event("org-dead", i))
        await sink.flush()
        await sink.kill()  # a crash: nothing signed, and its stop() never runs
        async def crashed(max_age: float) -> None:
            return None
        sink._checkpoint_due = crashed
        # Time passes: the open stretch is an hour old.
        await _exec_rt(runtime, update(AuditHead).where(AuditHead.org_id == "org-dead").values(
            checkpoint_at=utcnow() - timedelta(hours=1)))
        assert await checkpoints(runtime, "org-dead") == []
    async with running_sink(settings, tick=60.0) as (runtime, _):  # no tick has run: start() signed
        assert [c.seq for c in await checkpoints(runtime, "org-dead")] == [3]


async def _exec_rt(runtime: Any, *stmts: Any) -> None:
    async with runtime.sessions() as s, s.begin():
        for st in stmts:
            await s.execute(st)


async def test_checkpoints_state_their_rule_and_verification_follows_it(settings_factory: Any) -> None:
    """The rule is signed into each checkpoint: a chain written with every=5 still verifies
    when the setting is later lowered to 3 (its stretches follow the rule they were signed
    under), and a verifier configured looser does not excuse a stretch its checkpoints forbid."""
    async with running_sink(settings_factory(audit_checkpoint_every=5), tick=60.0) as (runtime, sink):
        for i in range(12):
            await sink.record(event("org-rule", i))
        await sink.flush()
        cps = await checkpoints(runtime, "org-rule")
        claims = verify_checkpoint(cps[0].token, runtime.keys.public_key, "org-rule")
        assert (claims["every"], claims["interval"]) == (5, sink.checkpoint_age)
        assert (await repo.verify_org(runtime.sessions, "org-rule", runtime.keys, every=3)).valid
        await _exec_rt(runtime, delete(AuditCheckpoint).where(AuditCheckpoint.seq == 5))
        res = await repo.verify_org(runtime.sessions, "org-rule", runtime.keys, every=1000)
        assert not res.valid and "10 events" in (res.problem or ""), res


async def test_offline_verifier_refuses_a_complete_export_with_an_unsigned_end(every10: Any) -> None:
    client, org = every10
    await _record(client, org, [None] * 12)
    lines = await _export(client, org)
    objs = [json.loads(x) for x in lines]
    last_cp = max(o["seq"] for o in objs if o["type"] == "checkpoint")
    cut = [json.dumps(o) for o in objs if not (o["type"] == "checkpoint" and o["seq"] == last_cp)]
    res = _offline(client, cut)
    assert not res.valid and "no signed checkpoint" in (res.problem or ""), res


# --- shadow diffs honour BASTION_AUDIT_INCLUDE_PARAMS ------------------------------------
@pytest.mark.parametrize("include", [False, True])
async def test_shadow_diffs_store_params_only_when_the_audit_does(settings_factory: Any, include: bool) -> None:
    from tests.conftest import make_key
    from tests.gateway.factories import action, add_manifest

    async with serve_app(create_app(settings_factory(audit_include_params=include))) as client:
        org = await bootstrap_org(client.app)
        await add_manifest(client.app.state.runtime, org.org_id, "support-bot", approved=["crm:*"], team="support")
        agent = {"X-API-Key": await make_key(client, org, "agent")}
        base = f"/api/v1/orgs/{org.org_id}/policies"
        rule = {"id": "no-delete", "subject": "team:support", "capability": "crm:delete", "effect": "deny"}
        r = await client.post(f"{base}/shadow", json={"rules": [rule]}, headers=org.headers)
        assert r.status_code == 201, r.text
        params = {"customer_email": "alice@example.com", "reason": "GDPR erasure"}
        r = await client.post("/api/v1/gateway/execute", json=action(tool="crm", type="delete", params=params),
                              headers=agent)
        assert r.status_code == 200 and r.json()["decision"] == "allow", r.text
        r = await client.get(f"{base}/shadow/diffs", headers=org.headers)
        assert r.status_code == 200 and r.json()["total"] == 1, r.text
        stored = r.json()["items"][0]["action"]
        assert stored["tool"] == "crm" and stored["type"] == "delete"
        if include:
            assert stored["params"] == params
        else:
            assert "params" not in stored and "alice@example.com" not in r.text
            assert stored["params_hash"] == params_digest(params)
            # The same digest as the decision's audit event, so the two can be matched.
            await client.app.state.audit.flush()
            events = (await client.get(f"/api/v1/orgs/{org.org_id}/audit/events",
                                       params={"kind": "gateway.execute"}, headers=org.headers)).json()["items"]
            assert events[0]["params_hash"] == stored["params_hash"] and events[0]["params"] is None


# --- every recorded kind is documented ---------------------------------------------------
ROOT = Path(__file__).resolve().parents[2]


def _recorded_kinds() -> set[str]:
    """Event kinds the code records: literal kinds handed to record_change or to a change's
    ``record`` (audit/changes.py, store/unit_of_work.py), the policy store's kinds (returned to
    its audit hook), and the bootstrap's. Read from the syntax tree, so an example in a
    docstring is not a kind."""
    import ast
    import importlib
    import importlib.util
    import re

    def literal(node: ast.expr) -> str | None:
        ok = isinstance(node, ast.Constant) and isinstance(node.value, str)
        return node.value if ok and re.fullmatch(r"[a-z_]+\.[a-z_]+", node.value) else None  # type: ignore[union-attr]

    kinds: set[str] = set()
    packages = [p for p in ("api", "gateway", "store", "bastion", "services", "audit") if importlib.util.find_spec(p)]
    for package in packages:
        # The installed package's files (make test runs against a wheel, from a tree without them).
        folder = Path(importlib.import_module(package).__file__ or "").parent
        for path in folder.glob("*.py"):
            text = path.read_text(encoding="utf-8")
            for node in ast.walk(ast.parse(text)):
                if not isinstance(node, ast.Call):
                    continue
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
                args = node.args[2:3] if name == "record_change" else node.args[:1] if name == "record" else []
                kinds.update(k for k in map(literal, args) if k)
            if path.name in ("policy_rules.py", "bootstrap.py"):
                kinds.update(re.findall(r'"((?:policy|org|member|api_key)\.[a-z_]+)"', text))
    return kinds


def test_every_recorded_kind_is_documented() -> None:
    kinds = _recorded_kinds()
    assert {"policy.replaced", "policy.rule_added", "api_key.created",  # the scan works
            "capability_token.issued", "capability_token.revoked"} <= kinds
    audit_doc = (ROOT / "docs" / "audit.md").read_text(encoding="utf-8")
    assert sorted(k for k in kinds if f"`{k}`" not in audit_doc) == []
    # docs/policies.md lists the policy kinds, CLI imports included.
    policies_doc = (ROOT / "docs" / "policies.md").read_text(encoding="utf-8")
    assert sorted(k for k in kinds if k.startswith("policy.") and f"`{k}`" not in policies_doc) == []
    assert "not as audit" not in " ".join(policies_doc.split())


# --- actors: the key's id and its name ---------------------------------------------------
async def test_a_key_actor_is_recorded_with_its_id_and_name(client: Any, org: Org) -> None:
    """Audit events name a key by id and name; the name is what the other records show."""
    from tests.gateway.factories import action, add_manifest

    base = f"/api/v1/orgs/{org.org_id}"
    r = await client.post(f"{base}/api-keys", json={"name": "release-bot", "role": "policy_author"}, headers=org.headers)
    assert r.status_code == 201, r.text
    author = {"id": r.json()["id"], "key": r.json()["key"]}
    r = await client.post(f"{base}/api-keys", json={"name": "crm-agent", "role": "agent"}, headers=org.headers)
    agent = {"id": r.json()["id"], "key": r.json()["key"]}
    await add_manifest(client.app.state.runtime, org.org_id, "support-bot", max_per_hour=100, max_per_day=100)
    rule = {"id": "no-delete", "subject": "*", "capability": "crm:delete", "effect": "deny"}
    r = await client.post(f"{base}/policies/rules", json=rule, headers={"X-API-Key": author["key"]})
    assert r.status_code == 201, r.text
    r = await client.post("/api/v1/gateway/execute", json=action(), headers={"X-API-Key": agent["key"]})
    assert r.status_code == 200, r.text
    await client.app.state.audit.flush()
    events = (await client.get(f"{base}/audit/events", params={"limit": 100}, headers=org.headers)).json()["items"]
    by_kind = {e["kind"]: e for e in events}
    assert by_kind["policy.rule_added"]["actor"] == f"api_key:{author['id']} (release-bot)"
    assert by_kind["gateway.execute"]["actor"] == f"api_key:{agent['id']} (crm-agent)"
    (made,) = [e for e in events if e["kind"] == "api_key.created" and e["details"]["name"] == "release-bot"]
    assert made["actor"].startswith("api_key:") and made["actor"].endswith(" (bootstrap)")  # the owner's key
    # The policy version names the same key by that name.
    versions = (await client.get(f"{base}/policies/versions", headers=org.headers)).json()["items"]
    assert versions[0]["author"] == "release-bot"


# --- bastion bootstrap is audited ---------------------------------------------------------
async def test_bootstrap_is_recorded_in_the_org_chain(tmp_path: Path, settings: Any) -> None:
    """``bastion bootstrap`` (a subprocess, as an operator runs it) records the org, the owner
    and each key it issues; a second run records only the new key."""
    from tests.foundation.test_foundation_cli import _bootstrap_env, run

    env = _bootstrap_env(tmp_path, settings)
    args = ["bootstrap", "--org-slug", "initech", "--org-name", "Initech", "--admin-email", "boss@initech.com",
            "--admin-password", "tps-report-99"]
    first = run(args, env, tmp_path)
    assert first.returncode == 0, first.stderr
    second = run(args, env, tmp_path)
    assert second.returncode == 0, second.stderr
    one, two = json.loads(first.stdout), json.loads(second.stdout)
    async with serve_app(create_app(settings)) as c:
        headers = {"X-API-Key": one["api_key"]}
        r = await c.get(f"/api/v1/orgs/{one['org_id']}/audit/events", headers=headers)
        events = list(reversed(r.json()["items"]))
        assert [e["kind"] for e in events] == ["org.created", "member.added", "api_key.created", "api_key.created"]
        assert {e["actor"] for e in events} == {"cli:bootstrap"}
        assert all(e["details"]["via"] == "bootstrap" for e in events)
        assert events[0]["details"]["slug"] == "initech"
        assert (events[1]["details"]["user_id"], events[1]["details"]["role"]) == (one["user_id"], "owner")
        keys = (await c.get(f"/api/v1/orgs/{one['org_id']}/api-keys", headers=headers)).json()["items"]
        assert sorted(e["details"]["key_id"] for e in events[2:]) == sorted(k["id"] for k in keys)
        assert two["org_id"] == one["org_id"]
        v = (await c.get(f"/api/v1/orgs/{one['org_id']}/audit/verify", headers=headers)).json()
        assert v["valid"] is True and v["checked"] == 4, v


async def test_bootstrap_that_cannot_be_audited_creates_nothing(settings: Any, monkeypatch: Any) -> None:
    from store import accounts
    from store.bootstrap import bootstrap
    from store.runtime import Runtime

    async def broken(*a: Any, **k: Any) -> int:
        raise RuntimeError("audit append failed")

    runtime = Runtime.build(settings)
    try:
        monkeypatch.setattr(repo, "append_events", broken)
        with pytest.raises(RuntimeError):
            await bootstrap(runtime, "hooli", "Hooli", "gavin@hooli.com", "middle-out-99")
        async with runtime.sessions() as s:
            assert await accounts.get_org_by_slug(s, "hooli") is None
            assert await accounts.get_user_by_email(s, "gavin@hooli.com") is None
    finally:
        await runtime.engine.dispose()
        if runtime.redis is not None:
            await runtime.redis.aclose()


def test_created_at_is_stored_in_its_fixed_width_form() -> None:
    """The writer orders an open stretch's creation times by their stored text."""
    e = event("o1", 1)
    e.created_at = "2026-11-23T12:09:40+01:00"
    assert normalize(e)["created_at"] == "2026-11-23T11:09:40.000000Z"
    e.created_at = "yesterday"
    assert parse_ts(normalize(e)["created_at"]) <= utcnow()
    # A producer's dict (what the writer decodes from a stream entry) is normalized the same way.
    assert normalize(dict(e.to_dict(), created_at="2026-11-23T12:09:40+01:00"))["created_at"] == \
        "2026-11-23T11:09:40.000000Z"
