"""Tamper evidence: modify, delete, reorder, insert, truncate — caught by the verify endpoint
and by the offline verifier (library and ``bastion audit verify``); retention keeps it valid."""
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
from audit.checkpoint import sign_checkpoint
from audit.event import build_event, format_ts
from audit.export import verify_export
from audit.verify import VerifyResult
from bastion.app import create_app
from store import audit as repo
from store.models import AuditCheckpoint, AuditEvent, AuditHead
from tests.conftest import Org, bootstrap_org, serve_app

N = 25  # events; a checkpoint every 10 -> at 10 and 20, the tail 21..28 unsigned
BOOTSTRAP_EVENTS = 3  # bastion bootstrap's own events come first: org.created, member.added, api_key.created


@pytest.fixture
async def app_client(settings_factory: Any) -> AsyncIterator[Any]:
    async with serve_app(create_app(settings_factory(audit_checkpoint_every=10))) as c:
        yield c


@pytest.fixture
async def chain(app_client: Any) -> tuple[Any, Org]:
    org = await bootstrap_org(app_client.app)
    sink = app_client.app.state.audit
    for i in range(N):
        await sink.record(build_event(org_id=org.org_id, kind="gateway.execute", actor="api_key:k", uapk_id="bot",
                                      agent_id="a1", capability="crm:read", decision="allow", request_id=f"r{i}",
                                      params={"i": i}, has_params=True))
    await sink.flush()
    return app_client, org


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


async def _rows(client: Any, org: Org) -> list[AuditEvent]:
    from tests.audit.helpers import rows

    return await rows(client.app.state.runtime, org.org_id)


async def _exec(client: Any, *stmts: Any) -> None:
    async with client.app.state.runtime.sessions() as s, s.begin():
        for st in stmts:
            await s.execute(st)


async def _rehash_from(client: Any, org: Org, seq: int) -> None:
    """What an attacker with database access (but not the signing key) would do to hide an
    edit: recompute every hash from ``seq`` on and move the head."""
    rows = await _rows(client, org)
    prev = ZERO_HASH
    stmts = []
    for r in rows:
        if r.seq >= seq:
            h = chain_hash(prev, event_body(r))
            stmts.append(update(AuditEvent).where(AuditEvent.id == r.id).values(hash=h))
            prev = h
        else:
            prev = r.hash
    last = rows[-1]
    stmts.append(update(AuditHead).where(AuditHead.org_id == org.org_id).values(seq=last.seq, hash=prev))
    await _exec(client, *stmts)


def _ev(org: Org, seq: int) -> Any:
    return (AuditEvent.org_id == org.org_id) & (AuditEvent.seq == seq)


async def test_untampered_chain_is_valid_everywhere(chain: Any) -> None:
    client, org = chain
    v = await _verify(client, org)
    assert v["valid"] and v["checked"] == N + BOOTSTRAP_EVENTS and v["last_checkpoint"]["seq"] == 20
    res = _offline(client, await _export(client, org))
    assert res.valid and res.checked == N + BOOTSTRAP_EVENTS, res


async def test_modified_event(chain: Any) -> None:
    client, org = chain
    victim = (await _rows(client, org))[6]
    await _exec(client, update(AuditEvent).where(_ev(org, 7)).values(decision="deny"))
    v = await _verify(client, org)
    assert not v["valid"] and v["first_invalid_event_id"] == victim.event_id and "modified" in v["problem"]
    res = _offline(client, await _export(client, org))
    assert not res.valid and res.first_invalid_event_id == victim.event_id


async def test_modified_event_with_rehashed_chain_is_caught_by_the_checkpoint(chain: Any) -> None:
    client, org = chain
    rows = await _rows(client, org)
    await _exec(client, update(AuditEvent).where(_ev(org, 14)).values(actor="user:someone-else"))
    await _rehash_from(client, org, 14)
    v = await _verify(client, org)
    assert not v["valid"] and "checkpoint at seq 20" in v["problem"]
    assert v["first_invalid_event_id"] == rows[10].event_id  # first event after the seq-10 checkpoint
    assert not _offline(client, await _export(client, org)).valid


async def test_modified_event_in_the_export_file(chain: Any) -> None:
    client, org = chain
    lines = await _export(client, org)
    for i, line in enumerate(lines):
        obj = json.loads(line)
        if obj["type"] == "event" and obj["seq"] == 3:
            obj["event"]["capability"] = "payments:send"
            lines[i] = json.dumps(obj)
    res = _offline(client, lines)
    assert not res.valid and "modified" in (res.problem or "")


async def test_deleted_event(chain: Any) -> None:
    client, org = chain
    after = (await _rows(client, org))[12]
    await _exec(client, delete(AuditEvent).where(_ev(org, 12)))
    v = await _verify(client, org)
    assert not v["valid"] and v["first_invalid_event_id"] == after.event_id and "missing" in v["problem"]
    assert not _offline(client, await _export(client, org)).valid


async def test_deleted_event_with_renumbered_rehashed_chain(chain: Any) -> None:
    client, org = chain
    rows = await _rows(client, org)
    stmts: list[Any] = [delete(AuditEvent).where(_ev(org, 5))]
    for r in rows[5:]:
        stmts.append(update(AuditEvent).where(AuditEvent.id == r.id).values(seq=r.seq - 1))
    await _exec(client, *stmts)
    await _rehash_from(client, org, 5)
    v = await _verify(client, org)
    assert not v["valid"] and "checkpoint" in v["problem"]
    assert not _offline(client, await _export(client, org)).valid


async def test_deleted_oldest_events(chain: Any) -> None:
    """Cutting the start of the log (up to a regular checkpoint) is not retention."""
    client, org = chain
    await _exec(client, delete(AuditEvent).where((AuditEvent.org_id == org.org_id) & (AuditEvent.seq <= 10)))
    v = await _verify(client, org)
    assert not v["valid"] and "oldest events were deleted" in v["problem"]
    assert not _offline(client, await _export(client, org)).valid


async def test_reordered_events(chain: Any) -> None:
    client, org = chain
    rows = await _rows(client, org)
    a, b = rows[3], rows[4]
    await _exec(
        client,
        update(AuditEvent).where(AuditEvent.id == a.id).values(seq=-1),
        update(AuditEvent).where(AuditEvent.id == b.id).values(seq=a.seq),
        update(AuditEvent).where(AuditEvent.id == a.id).values(seq=b.seq),
    )
    v = await _verify(client, org)
    assert not v["valid"] and v["first_invalid_event_id"] == b.event_id
    # Reordering lines of an export.
    lines = await _export(client, org)
    client2 = client
    await _rehash_from(client2, org, 1)  # even re-hashed, the order differs from the signed one
    assert not (await _verify(client, org))["valid"]
    ev = [i for i, x in enumerate(lines) if json.loads(x)["type"] == "event"]
    lines[ev[7]], lines[ev[8]] = lines[ev[8]], lines[ev[7]]
    assert not _offline(client, lines).valid


async def test_inserted_event(chain: Any) -> None:
    client, org = chain
    rows = await _rows(client, org)
    forged = build_event(org_id=org.org_id, kind="gateway.execute", actor="api_key:k", uapk_id="bot",
                         decision="allow", capability="payments:send")
    stmts: list[Any] = [update(AuditEvent).where(AuditEvent.id == r.id).values(seq=r.seq + 1000) for r in rows[15:]]
    stmts += [update(AuditEvent).where(AuditEvent.id == r.id).values(seq=r.seq + 1) for r in rows[15:]]
    await _exec(client, *stmts[: len(rows) - 15])
    await _exec(client, *[update(AuditEvent).where(AuditEvent.id == r.id).values(seq=r.seq + 1) for r in rows[15:]])
    body = dict(forged.to_dict(), seq=16)
    await _exec(client, AuditEvent.__table__.insert().values(**body, hash="0" * 64))
    await _rehash_from(client, org, 16)
    v = await _verify(client, org)
    assert not v["valid"] and "checkpoint at seq 20" in v["problem"]
    # A line inserted into an export.
    lines = await _export(client, org)
    assert not _offline(client, lines).valid


async def test_inserted_line_in_export(chain: Any) -> None:
    client, org = chain
    lines = await _export(client, org)
    ev = [i for i, x in enumerate(lines) if json.loads(x)["type"] == "event"]
    dup = json.loads(lines[ev[4]])
    dup["event"]["event_id"] = "forged"
    lines.insert(ev[5], json.dumps(dup))
    res = _offline(client, lines)
    assert not res.valid and "reordered or inserted" in (res.problem or "")


async def test_truncated_tail(chain: Any) -> None:
    client, org = chain
    # Tail after the last checkpoint: the head row still says 25.
    await _exec(client, delete(AuditEvent).where((AuditEvent.org_id == org.org_id) & (AuditEvent.seq > 23)))
    v = await _verify(client, org)
    assert not v["valid"] and "truncated" in v["problem"]
    # And with the head row moved back too: the seq-20 checkpoint still covers more.
    await _exec(
        client,
        delete(AuditEvent).where((AuditEvent.org_id == org.org_id) & (AuditEvent.seq > 15)),
        update(AuditHead).where(AuditHead.org_id == org.org_id).values(seq=15),
    )
    v = await _verify(client, org)
    assert not v["valid"] and "signed checkpoint covers seq 20" in v["problem"]


async def test_truncated_export(chain: Any) -> None:
    client, org = chain
    lines = await _export(client, org)
    # The export signs the head first, so its last event is under a checkpoint.
    assert any(json.loads(x).get("seq") == N + BOOTSTRAP_EVENTS and json.loads(x)["type"] == "checkpoint" for x in lines)
    cut = [x for x in lines if not (json.loads(x)["type"] == "event" and json.loads(x)["seq"] > 22)]
    end = json.loads(cut[-1])
    end["last_seq"] = 22
    cut[-1] = json.dumps(end)
    res = _offline(client, cut)
    assert not res.valid and "truncated" in (res.problem or "")
    assert not _offline(client, lines[:-1]).valid  # the end line cut off


async def test_forged_checkpoint(chain: Any) -> None:
    client, org = chain
    async with client.app.state.runtime.sessions() as s:
        from sqlalchemy import select

        cp = (await s.execute(select(AuditCheckpoint).where(AuditCheckpoint.org_id == org.org_id))).scalars().first()
    head, payload, sig = cp.token.split(".")
    bad = f"{head}.{payload}.{sig[:-4]}AAAA"
    await _exec(client, update(AuditCheckpoint).where(AuditCheckpoint.id == cp.id).values(token=bad))
    v = await _verify(client, org)
    assert not v["valid"] and "not validly signed" in v["problem"]


async def test_retention_prune_keeps_the_chain_verifiable(chain: Any) -> None:
    client, org = chain
    runtime = client.app.state.runtime
    rows = await _rows(client, org)
    # Backdate the first 12 events (as if written long ago) and re-hash, as a clean setup.
    old = datetime(2020, 1, 1, tzinfo=UTC)
    await _exec(client, *[update(AuditEvent).where(AuditEvent.id == r.id).values(
        created_at=format_ts(old + timedelta(seconds=r.seq))) for r in rows[:12]])
    await _rehash_from(client, org, 1)
    await _exec(client, delete(AuditCheckpoint).where(AuditCheckpoint.org_id == org.org_id))
    # Sign again as the writer would have: every 10 events, and the old events (long before
    # the others) in a stretch of their own.
    rows = await _rows(client, org)
    for seq in (10, 12, 22):
        await _exec(client, AuditCheckpoint.__table__.insert().values(
            org_id=org.org_id, seq=seq, hash=rows[seq - 1].hash, anchor=False, kid=runtime.keys.signing_key.kid,
            token=sign_checkpoint(runtime.keys, "bastion", org.org_id, seq, rows[seq - 1].hash),
            created_at=datetime.now(UTC)))
    await _exec(client, update(AuditHead).where(AuditHead.org_id == org.org_id).values(checkpoint_seq=22))
    await repo.checkpoint_now(runtime.sessions, org.org_id, runtime.keys, "bastion")
    assert (await _verify(client, org))["valid"]
    deleted = await repo.prune_all(runtime.sessions, 365, runtime.keys, runtime.settings.issuer)
    assert deleted == 12
    v = await _verify(client, org)
    assert v["valid"] and v["start"] == "anchor" and v["first_seq"] == 13 and v["checked"] == N + BOOTSTRAP_EVENTS - 12, v
    res = _offline(client, await _export(client, org))
    assert res.valid and res.start == "anchor", res
    # Without the anchor, the missing start is an error again.
    await _exec(client, delete(AuditCheckpoint).where(AuditCheckpoint.anchor.is_(True)))
    assert not (await _verify(client, org))["valid"]


async def test_export_window_verifies_from_the_nearest_checkpoint(chain: Any) -> None:
    client, org = chain
    rows = await _rows(client, org)
    lines = await _export(client, org, **{"from": rows[14].created_at})
    events = [json.loads(x) for x in lines if json.loads(x)["type"] == "event"]
    assert events[0]["seq"] == 11  # back to the checkpoint at 10
    res = _offline(client, lines)
    assert res.valid and res.start == "checkpoint", res
    lines = await _export(client, org, to=rows[4].created_at)
    res = _offline(client, lines)
    assert res.valid and res.last_seq == 5, res


async def test_cli_verifies_an_export(chain: Any, tmp_path: Path) -> None:
    client, org = chain
    jwks = tmp_path / "jwks.json"
    jwks.write_text((await client.get("/.well-known/jwks.json")).text)
    good = tmp_path / "good.jsonl"
    lines = await _export(client, org)
    good.write_text("\n".join(lines) + "\n")
    cmd = [sys.executable, "-m", "bastion.cli", "audit", "verify"]
    ok = subprocess.run([*cmd, str(good), "--jwks", str(jwks)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["valid"] is True
    bad = tmp_path / "bad.jsonl"
    edited = []
    for line in lines:
        obj = json.loads(line)
        if obj["type"] == "event" and obj["seq"] == 2:
            obj["event"]["decision"] = "deny"
        edited.append(json.dumps(obj))
    bad.write_text("\n".join(edited) + "\n")
    res = subprocess.run([*cmd, str(bad), "--jwks", str(jwks)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert res.stderr.startswith("bastion: audit verify: INVALID:") and len(res.stderr.strip().splitlines()) == 1
    # A JWKS without the signing key: the checkpoints cannot be trusted.
    other = tmp_path / "other.jwks"
    other.write_text(json.dumps({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "x",
                                           "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}))
    res = subprocess.run([*cmd, str(good), "--jwks", str(other)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "not validly signed" in res.stderr


async def test_cli_fetches_the_jwks_by_url(chain: Any, tmp_path: Path) -> None:
    import http.server
    import threading

    client, org = chain
    jwks_body = (await client.get("/.well-known/jwks.json")).content

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(jwks_body)

        def log_message(self, *a: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        f = tmp_path / "e.jsonl"
        f.write_text("\n".join(await _export(client, org)) + "\n")
        url = f"http://127.0.0.1:{server.server_port}/.well-known/jwks.json"
        res = subprocess.run([sys.executable, "-m", "bastion.cli", "audit", "verify", str(f), "--jwks", url],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
    finally:
        server.shutdown()
