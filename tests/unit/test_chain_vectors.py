"""The audit chain's format is pinned: fixed events with hard-coded chain hashes and a
hard-coded signed checkpoint (computed once from the implementation and frozen here), and a
verifier written from docs/audit.md alone (tests/audit/independent_verifier.py) that must
accept a real export and refuse a tampered one. Pure: no database, no Redis (tests/audit/
test_chain_vectors_stored.py checks that the database path stores exactly these hashes).

A change to how events are hashed (the JCS form, the fields, how the previous hash is fed in)
breaks every third-party verifier built from the documentation; these tests make such a change
fail loudly instead of passing silently.
"""
from __future__ import annotations

import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.chain import ZERO_HASH, chain_hash, event_body
from audit.checkpoint import verify_checkpoint
from audit.export import verify_export
from tests.audit import independent_verifier as third_party

ORG = "7a1c0f4e-3b52-4d8e-9a61-0c2f5b8d9e10"
PARAMS_HASH = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
# Three events as stored and hashed: a management change with non-ASCII text, an escalation, and
# an allow whose params exercise RFC 8785 number and string forms (-0.0, 1e21, 2**53 - 1, U+2028).
EVENTS: list[dict[str, Any]] = [
    {"event_id": "00000000-0000-4000-8000-000000000001", "org_id": ORG, "seq": 1, "kind": "org.created",
     "actor": "user:owner@acme.com", "uapk_id": None, "agent_id": None, "capability": None, "decision": None,
     "reasons": None, "policy_version": None, "request_id": "req-1", "interaction_id": None, "params_hash": None,
     "params": None, "details": {"slug": "acme", "name": "Acme Café ☕"}, "created_at": "2026-11-23T11:09:40.123456Z"},
    {"event_id": "00000000-0000-4000-8000-000000000002", "org_id": ORG, "seq": 2, "kind": "gateway.execute",
     "actor": "api_key:k1", "uapk_id": "refund-bot", "agent_id": "agent-1", "capability": "stripe:refund",
     "decision": "escalate",
     "reasons": [{"code": "requires_human_approval", "message": "Capability 'stripe:refund' requires human approval.",
                  "details": {"capability": "stripe:refund"}}],
     "policy_version": "3.a1b2c3d4e5f6", "request_id": "req-2", "interaction_id": "5b0c7f0e-0000-4000-8000-000000000002",
     "params_hash": PARAMS_HASH, "params": None,
     "details": {"amount": 1500.5, "currency": "EUR", "limits": {"hour": 100, "day": 1000}},
     "created_at": "2026-11-23T11:09:41.000001Z"},
    {"event_id": "00000000-0000-4000-8000-000000000003", "org_id": ORG, "seq": 3, "kind": "gateway.execute",
     "actor": "api_key:k1", "uapk_id": "refund-bot", "agent_id": "agent-1", "capability": "stripe:refund",
     "decision": "allow",
     "reasons": [{"code": "override_token_accepted", "message": "Allowed by a human's override token.",
                  "details": {"approval_id": "ap-1"}}],
     "policy_version": "3.a1b2c3d4e5f6", "request_id": "req-3", "interaction_id": "5b0c7f0e-0000-4000-8000-000000000003",
     "params_hash": PARAMS_HASH,
     "params": {"charge_id": "ch_1", "lines": [1, 2.0, -0.0, 1e21, 9007199254740991], "note": "\u00e9\u2028\"q\""},
     "details": {"amount": 1500.5, "currency": "EUR"}, "created_at": "2026-11-23T11:09:42.999999Z"},
]
HASHES = [
    "eaea933a3be0468047fe085c3b150118ff3ec343d11e09808a5499e2cbc0db7f",
    "d9f49a4ae19fabe03a3ffdefced8f6258a168fced66ba65c560500ece7e989d8",
    "8047bd86c8bdcfc68b81e7f8ed41d3ea838ee26b8d4f1472652c127ab1d059b9",
]
# A checkpoint over the head (seq 3), signed by the Ed25519 key whose seed is bytes 0..31.
KID = "vector-key-1"
PUBLIC_X = "A6EHv_POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg"
CHECKPOINT = (
    "eyJhbGciOiJFZERTQSIsImtpZCI6InZlY3Rvci1rZXktMSIsInR5cCI6ImJhc3Rpb24tYXVkaXQtY2hlY2twb2ludCtqd3QifQ."
    "eyJpYXQiOjE3OTU0MzIxODMsIm5iZiI6MTc5NTQzMjE4MywiZXhwIjo0OTU3NjcyMTgzLCJqdGkiOiIwMTIzNDU2Nzg5YWJjZGVmMDEy"
    "MzQ1Njc4OWFiY2RlZiIsImlzcyI6ImJhc3Rpb24iLCJhdWQiOiJiYXN0aW9uLWF1ZGl0Iiwic3ViIjoiN2ExYzBmNGUtM2I1Mi00ZDhl"
    "LTlhNjEtMGMyZjViOGQ5ZTEwIiwib3JnX2lkIjoiN2ExYzBmNGUtM2I1Mi00ZDhlLTlhNjEtMGMyZjViOGQ5ZTEwIiwic2VxIjozLCJo"
    "YXNoIjoiODA0N2JkODZjOGJkY2ZjNjhiODFlN2Y4ZWQ0MWQzZWE4MzhlZTI2YjhkNGYxNDcyNjUyYzEyN2FiMWQwNTliOSIsImFuY2hv"
    "ciI6ZmFsc2V9."
    "Bl1arBDYfp3E9IqWHvkchLsQEKhXwrayYpbdVJWGTVWHSUwqD-UTVMj0AV_t6-vAT6kAqd7P1O7pAuayXXSICQ"
)
JWKS = {"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": KID, "x": PUBLIC_X, "alg": "EdDSA", "use": "sig"}]}


def _vector_export() -> list[str]:
    lines = [{"type": "header", "format": "bastion-audit-export/1", "org_id": ORG, "issuer": "bastion",
              "exported_at": "2026-11-23T12:00:00Z", "from": None, "to": None},
             {"type": "checkpoint", "seq": 3, "hash": HASHES[2], "anchor": False, "kid": KID,
              "signed_at": "2026-11-23T11:09:43Z", "token": CHECKPOINT}]
    lines += [{"type": "event", "seq": e["seq"], "hash": h, "event": e} for e, h in zip(EVENTS, HASHES)]
    lines.append({"type": "end", "last_seq": 3, "events": 3, "complete": True, "head_seq": 3, "head_hash": HASHES[2]})
    return [json.dumps(x) for x in lines]


def test_chain_hashes_of_the_vectors() -> None:
    prev = ZERO_HASH
    for event, expected in zip(EVENTS, HASHES):
        assert event_body(event) == event  # every documented field, nothing else
        prev = chain_hash(prev, event)
        assert prev == expected, event["seq"]
    # The independent implementation agrees link by link.
    prev = third_party.GENESIS
    for event, expected in zip(EVENTS, HASHES):
        prev = third_party.link(prev, event)
        assert prev == expected


def test_checkpoint_vector_verifies_with_both_verifiers() -> None:
    public = Ed25519PrivateKey.from_private_bytes(bytes(range(32))).public_key()
    claims = verify_checkpoint(CHECKPOINT, {KID: public}.get, ORG)
    assert (claims["seq"], claims["hash"], claims["anchor"], claims["kid"]) == (3, HASHES[2], False, KID)
    assert claims["aud"] == "bastion-audit" and claims["sub"] == ORG and claims["iss"] == "bastion"
    assert third_party.checkpoint_claims(CHECKPOINT, third_party.jwks_keys(JWKS), ORG)["hash"] == HASHES[2]

    export = _vector_export()
    ours = verify_export(export, {KID: public}.get)
    assert ours.valid and ours.checked == 3 and ours.last_seq == 3, ours
    theirs = third_party.verify_export(export, JWKS)
    assert theirs.valid and theirs.checked == 3, theirs


def test_tampered_vectors_are_refused_by_both_verifiers() -> None:
    public = Ed25519PrivateKey.from_private_bytes(bytes(range(32))).public_key()
    for tamper in ("field", "checkpoint", "tail"):
        lines = [json.loads(x) for x in _vector_export()]
        if tamper == "field":
            lines[3]["event"]["details"]["amount"] = 15005  # and its hash left as it was
        elif tamper == "checkpoint":
            lines[1]["token"] = CHECKPOINT[:-4] + ("AAAA" if not CHECKPOINT.endswith("AAAA") else "BBBB")
        else:
            del lines[4]  # the newest event, under a signed checkpoint
            lines[-1].update(last_seq=2, events=2, head_seq=2, head_hash=HASHES[1])
        text = [json.dumps(x) for x in lines]
        assert not verify_export(text, {KID: public}.get).valid, tamper
        assert not third_party.verify_export(text, JWKS).valid, tamper
