"""The export format (``bastion-audit-export/1``, JSON Lines) and its offline verification.

Lines: one ``header`` (format, org_id, the writer's ``checkpoint_every``/``checkpoint_interval``,
``from``/``to``), ``checkpoint`` lines (seq, hash, anchor, kid, signed_at, token), ``event``
lines (seq, hash, event = the hashed fields), one ``end`` line. docs/audit.md describes it;
``bastion audit verify`` runs :func:`verify_export` with no database library installed.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from audit.checkpoint import (
    DEFAULT_CHECKPOINT_EVERY,
    DEFAULT_CHECKPOINT_INTERVAL,
    PublicKeyLookup,
    claim_interval,
    verify_tokens,
)
from audit.event import FIELDS
from audit.verify import ChainVerifier, VerifyResult

EXPORT_FORMAT = "bastion-audit-export/1"


def export_line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def verify_export(lines: Iterable[str | bytes], public_key: PublicKeyLookup) -> VerifyResult:
    """Verify an export (``GET .../audit/export``) offline: the chain, every signed checkpoint
    (``public_key(kid)`` from the JWKS), and that nothing was cut from the end."""
    header: dict[str, Any] | None = None
    end: dict[str, Any] | None = None
    tokens: list[str] = []
    events: list[tuple[dict[str, Any], str | None]] = []
    for n, raw in enumerate(lines, 1):
        text = raw.decode() if isinstance(raw, bytes) else raw
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except ValueError:
            return VerifyResult(False, 0, None, f"line {n} is not JSON")
        kind = obj.get("type") if isinstance(obj, dict) else None
        if end is not None:
            return VerifyResult(False, 0, None, f"line {n}: data after the end line")
        if kind == "header":
            if header is not None or n != 1:
                return VerifyResult(False, 0, None, f"line {n}: a second header")
            header = obj
        elif header is None:
            return VerifyResult(False, 0, None, "the export does not start with a header line")
        elif kind == "checkpoint" and isinstance(obj.get("token"), str):
            tokens.append(obj["token"])
        elif kind == "event" and isinstance(obj.get("event"), dict):
            body = {k: obj["event"].get(k) for k in FIELDS}
            events.append((body, obj.get("hash")))
        elif kind == "end":
            end = obj
        else:
            return VerifyResult(False, 0, None, f"line {n}: unknown line type {kind!r}")
    if header is None:
        return VerifyResult(False, 0, None, "empty export")
    if header.get("format") != EXPORT_FORMAT:
        return VerifyResult(False, 0, None, f"unknown export format {header.get('format')!r}")
    org_id = header.get("org_id")
    if not isinstance(org_id, str):
        return VerifyResult(False, 0, None, "the header names no org_id")
    claims, problem = verify_tokens(tokens, public_key, org_id)
    if problem is not None:
        return VerifyResult(False, 0, None, problem)
    last_line_seq = end.get("last_seq") if end else None
    # A bounded export (``to``) carries only the checkpoints up to its last event, so its last
    # events may have none; a complete one ends at the checkpoint the server signed for it.
    every, interval = header.get("checkpoint_every"), header.get("checkpoint_interval")
    verifier = ChainVerifier(
        org_id, claims, allow_checkpoint_start=header.get("from") is not None,
        every=every if isinstance(every, int) and not isinstance(every, bool) and every >= 1 else DEFAULT_CHECKPOINT_EVERY,
        interval=claim_interval({"interval": interval}) or DEFAULT_CHECKPOINT_INTERVAL,
        sealed=header.get("to") is None,
    )
    for body, stored in events:
        if not verifier.add(body, stored):
            break
    if end is None and verifier.failed is None:
        verifier.fail("truncated: the export has no end line", None)
    result = verifier.finish(last_line_seq if isinstance(last_line_seq, int) else None)
    return result
