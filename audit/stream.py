"""The Redis stream the audit events travel on: its names and the entry encoding.

Events are entries of one stream (:data:`STREAM`), each with a single field ``e``
(:data:`FIELD`) holding the event as compact UTF-8 JSON (:func:`encode`). Gateway decisions
XADD it from the quota Lua script they already run (no extra round trip)::

    -- KEYS[n] = audit.stream.stream_key(), ARGV[m] = audit.stream.encode(event)
    redis.call('XADD', KEYS[n], '*', 'e', ARGV[m])

The writers (store/audit_writer.py) read it in the consumer group :data:`GROUP`.

Redis Cluster: the stream is one key, so a script that also touches the quota keys of an agent
(hash tag ``{org:uapk}``) would cross slots. ``stream_key(org_id, uapk_id)`` names a per-agent
stream with the same hash tag, but the writer reads only the single stream today: on a cluster,
either teach the writer the per-agent streams or keep the audit XADD out of the quota script
(``record``, one more round trip). Bastion targets a single Redis (or Sentinel).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import msgspec

from audit.event import AuditEvent

STREAM = "bastion:audit:events"
GROUP = "bastion-audit-writers"
FIELD = "e"

# Values that are not JSON (none of ours: build_event makes them so) become their str, as before.
_ENCODER = msgspec.json.Encoder(enc_hook=str)


def stream_key(org_id: str | None = None, uapk_id: str | None = None) -> str:
    """The Redis stream the events go to. With ``org_id`` and ``uapk_id``: the stream that shares
    the agent's quota hash tag (Redis Cluster; see the module doc)."""
    if org_id is not None and uapk_id is not None:
        return f"bq:{{{org_id}:{uapk_id}}}:audit"
    return STREAM


def encode(event: AuditEvent | Mapping[str, Any]) -> bytes:
    """The stream entry's ``e`` field: the event as compact UTF-8 JSON. A mapping is encoded as
    it is (what a decision's event amended as a dict looks like on the stream)."""
    if isinstance(event, AuditEvent):
        return _ENCODER.encode(event)
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def decode(raw: bytes | str) -> dict[str, Any]:
    """An entry's ``e`` field as a dict (the writer normalizes it; any producer's version)."""
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("an audit entry must be a JSON object")
    return value
