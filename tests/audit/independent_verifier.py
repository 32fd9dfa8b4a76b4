"""An audit-export verifier written from docs/audit.md alone, as a third party would write one.

It deliberately imports nothing of Bastion's: only the standard library, ``rfc8785`` (the JCS
implementation docs/audit.md names) and ``cryptography`` for Ed25519. If Bastion's own hashing
or checkpoint format drifts from what the documentation promises, this verifier and Bastion's
disagree on a real export, and tests/unit/test_chain_vectors.py fails.

What docs/audit.md specifies and this checks:

* lines: one ``header`` (``format: bastion-audit-export/1``, ``org_id``), ``checkpoint`` lines
  (``seq, hash, anchor, kid, token``), ``event`` lines (``seq, hash, event``), one ``end`` line
  (``last_seq, events, complete, head_seq, head_hash``);
* every event object has exactly the documented fields;
* ``h = sha256(bytes.fromhex(prev) + rfc8785.dumps(event))`` from 64 zeros, or from the hash
  of the checkpoint the export starts after (a retention anchor, or any checkpoint when the
  export has ``from``); ``h`` must equal the line's ``hash``;
* a checkpoint is an EdDSA JWT with ``typ = bastion-audit-checkpoint+jwt`` and a ``kid`` found
  in the JWKS, claims ``aud = bastion-audit``, ``sub = org_id = <the export's org>``, ``seq``,
  ``hash``, ``anchor``; its ``seq``/``hash`` equal the line's and the chain's hash at ``seq``;
  no signed checkpoint lies beyond the last event (a cut tail);
* the end line agrees with the events; a complete export ends at the chain head, on a signed
  checkpoint ("before every export").
"""
from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

EVENT_FIELDS = frozenset({
    "event_id", "org_id", "seq", "kind", "actor", "uapk_id", "agent_id", "capability", "decision", "reasons",
    "policy_version", "request_id", "interaction_id", "params_hash", "params", "details", "created_at",
})
GENESIS = "0" * 64


@dataclass
class Outcome:
    valid: bool
    checked: int
    problem: str | None = None


class Invalid(Exception):
    pass


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jwks_keys(jwks: dict[str, Any]) -> dict[str, Ed25519PublicKey]:
    """kid -> Ed25519 public key, from a JWKS document (``/.well-known/jwks.json``)."""
    out = {}
    for jwk in jwks.get("keys", []):
        if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519" and isinstance(jwk.get("kid"), str):
            out[jwk["kid"]] = Ed25519PublicKey.from_public_bytes(_b64url(jwk["x"]))
    return out


def checkpoint_claims(token: str, keys: dict[str, Ed25519PublicKey], org_id: str) -> dict[str, Any]:
    """The claims of a validly signed checkpoint of ``org_id``, else ``Invalid``."""
    parts = token.split(".")
    if len(parts) != 3:
        raise Invalid("a checkpoint is not a JWT")
    header, claims = json.loads(_b64url(parts[0])), json.loads(_b64url(parts[1]))
    if header.get("alg") != "EdDSA" or header.get("typ") != "bastion-audit-checkpoint+jwt":
        raise Invalid(f"a checkpoint has alg {header.get('alg')!r} and typ {header.get('typ')!r}")
    key = keys.get(header.get("kid"))
    if key is None:
        raise Invalid(f"a checkpoint is signed by an unknown key {header.get('kid')!r}")
    try:
        key.verify(_b64url(parts[2]), f"{parts[0]}.{parts[1]}".encode("ascii"))
    except InvalidSignature:
        raise Invalid("a checkpoint's signature does not verify") from None
    if claims.get("aud") != "bastion-audit" or claims.get("org_id") != org_id or claims.get("sub") != org_id:
        raise Invalid("a checkpoint is for another audience or organization")
    if not isinstance(claims.get("seq"), int) or not isinstance(claims.get("hash"), str):
        raise Invalid("a checkpoint has no seq or hash")
    return claims


def link(prev_hex: str, event: dict[str, Any]) -> str:
    """One step of the chain, exactly as docs/audit.md writes it."""
    return hashlib.sha256(bytes.fromhex(prev_hex) + rfc8785.dumps(event)).hexdigest()


def verify_export(lines: Iterable[str], jwks: dict[str, Any]) -> Outcome:
    checked = 0
    try:
        records = [json.loads(line) for line in lines if line.strip()]
        if not records or records[0].get("type") != "header":
            raise Invalid("the export does not start with a header")
        header = records[0]
        if header.get("format") != "bastion-audit-export/1":
            raise Invalid(f"unknown format {header.get('format')!r}")
        org_id = header["org_id"]
        ends = [r for r in records if r.get("type") == "end"]
        if len(ends) != 1 or records[-1] is not ends[0]:
            raise Invalid("the export does not end with exactly one end line")
        end = ends[0]
        keys = jwks_keys(jwks)
        signed: dict[int, list[dict[str, Any]]] = {}
        events = []
        for r in records[1:-1]:
            if r.get("type") == "checkpoint":
                claims = checkpoint_claims(r["token"], keys, org_id)
                if (claims["seq"], claims["hash"], bool(claims.get("anchor"))) != (r["seq"], r["hash"], bool(r["anchor"])):
                    raise Invalid(f"the checkpoint line at seq {r['seq']} differs from its signed claims")
                signed.setdefault(claims["seq"], []).append(claims)
            elif r.get("type") == "event":
                events.append(r)
            else:
                raise Invalid(f"unexpected line type {r.get('type')!r}")

        prev, seq = GENESIS, 0
        if events and events[0]["seq"] != 1:
            first = events[0]["seq"]
            usable = [c for c in signed.get(first - 1, [])
                      if c.get("anchor") or header.get("from") is not None]
            if not usable:
                raise Invalid(f"the export starts at seq {first} with no signed checkpoint before it")
            prev, seq = usable[0]["hash"], first - 1
        for r in events:
            event = r["event"]
            if set(event) != EVENT_FIELDS:
                raise Invalid(f"event at seq {r['seq']} has fields {sorted(set(event) ^ EVENT_FIELDS)} off the schema")
            if r["seq"] != seq + 1 or event["seq"] != r["seq"] or event["org_id"] != org_id:
                raise Invalid(f"event at seq {r['seq']} is out of place")
            prev, seq = link(prev, event), r["seq"]
            if prev != r["hash"]:
                raise Invalid(f"event at seq {seq} does not match its hash")
            for claims in signed.get(seq, []):
                if claims["hash"] != prev:
                    raise Invalid(f"the signed checkpoint at seq {seq} does not match the chain")
            checked += 1
        if any(s > seq for s in signed):
            raise Invalid(f"a signed checkpoint covers seq {max(signed)} but the export ends at seq {seq}")
        if end["last_seq"] != seq or end["events"] != len(events):
            raise Invalid("the end line disagrees with the events")
        if end.get("complete") and events:
            if (end["head_seq"], end["head_hash"]) != (seq, prev):
                raise Invalid("the chain head is beyond the exported events")
            if seq not in signed:
                raise Invalid("a complete export does not end on a signed checkpoint")
    except Invalid as exc:
        return Outcome(False, checked, str(exc))
    except (KeyError, TypeError, ValueError) as exc:
        return Outcome(False, checked, f"malformed export ({type(exc).__name__}: {exc})")
    return Outcome(True, checked)
