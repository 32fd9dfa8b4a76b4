"""The audit event: its fields, how values are made hashable, and the stored (normalized) form.

One event per gateway decision and per management change. The fields are the documented
schema of docs/audit.md; the writer adds ``seq`` when it appends the event to its
organization's chain (audit/chain.py hashes the stored form).
"""
from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec

from core.canonical import canonical_json
from core.clock import utcnow

# The hashed event fields, in the order the API shows them.
FIELDS = (
    "event_id", "org_id", "seq", "kind", "actor", "uapk_id", "agent_id", "capability", "decision",
    "reasons", "policy_version", "request_id", "interaction_id", "params_hash", "params", "details",
    "created_at",
)
# Column widths: longer strings are cut before hashing (the stored value is the hashed one).
WIDTHS = {
    "event_id": 64, "org_id": 36, "kind": 64, "actor": 300, "uapk_id": 63, "agent_id": 200,
    "capability": 200, "decision": 16, "policy_version": 80, "request_id": 128,
    "interaction_id": 64, "params_hash": 80, "created_at": 32,
}
_MAX_SAFE_INT = 2**53 - 1


class AuditEvent(msgspec.Struct, kw_only=True):
    """One event as a producer hands it over (every documented field but ``seq``, which the
    writer assigns). Build it with :func:`build_event`: that makes the JSON values hashable and
    stamps the fixed-width ``created_at``."""

    event_id: str
    org_id: str
    kind: str
    actor: str | None = None
    uapk_id: str | None = None
    agent_id: str | None = None
    capability: str | None = None
    decision: str | None = None
    reasons: list[Any] | None = None
    policy_version: str | None = None
    request_id: str | None = None
    interaction_id: str | None = None
    params_hash: str | None = None
    params: Any = None
    details: dict[str, Any] | None = None
    created_at: str

    def to_dict(self) -> dict[str, Any]:
        return msgspec.structs.asdict(self)


def format_ts(dt: datetime) -> str:
    """Fixed-width RFC 3339 (microseconds, Z): the stored and hashed ``created_at``; sorts as text."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_ts(text: str) -> datetime:
    """RFC 3339 with an offset (or Z); raises ValueError otherwise."""
    dt = datetime.fromisoformat(text.strip().replace("z", "Z").replace("Z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError("a time zone offset (or Z) is required")
    return dt.astimezone(UTC)


def jcs_safe(value: Any) -> Any:
    """A JSON value RFC 8785 accepts: integers beyond 2**53 and non-finite floats become strings,
    tuples lists, other objects their ``str``."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value if -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): jcs_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jcs_safe(v) for v in value]
    return str(value)


def params_digest(params: Any) -> str:
    """``sha256:<hex>`` of the JCS of the action params (``{}`` when absent)."""
    return "sha256:" + hashlib.sha256(canonical_json(jcs_safe(params if params is not None else {}))).hexdigest()


def reason_dict(reason: Any) -> Any:
    """A decision reason as the event stores it (an object with ``as_dict``, or already a dict)."""
    if hasattr(reason, "as_dict"):
        return reason.as_dict()
    return reason


def build_event(
    *,
    org_id: str,
    kind: str,
    actor: str | None = None,
    uapk_id: str | None = None,
    agent_id: str | None = None,
    capability: str | None = None,
    decision: str | None = None,
    reasons: Iterable[Any] | None = None,
    policy_version: str | None = None,
    request_id: str | None = None,
    interaction_id: str | None = None,
    params: Any = None,
    has_params: bool = False,
    include_params: bool = False,
    details: Mapping[str, Any] | None = None,
    created_at: datetime | None = None,
    event_id: str | None = None,
) -> AuditEvent:
    """An audit event (any kind). ``params_hash`` is set when ``has_params`` (or params given);
    the params themselves only with ``include_params`` (BASTION_AUDIT_INCLUDE_PARAMS)."""
    with_params = has_params or params is not None
    return AuditEvent(
        event_id=event_id or str(uuid.uuid4()),
        org_id=org_id,
        kind=kind,
        actor=actor,
        uapk_id=uapk_id,
        agent_id=agent_id,
        capability=capability,
        decision=decision,
        reasons=[reason_dict(r) for r in reasons] if reasons is not None else None,
        policy_version=policy_version,
        request_id=request_id,
        interaction_id=interaction_id,
        params_hash=params_digest(params) if with_params else None,
        params=jcs_safe(params) if (include_params and with_params) else None,
        details=jcs_safe(dict(details)) if details else None,
        created_at=format_ts(created_at or utcnow()),
    )


def normalize(event: AuditEvent | Mapping[str, Any]) -> dict[str, Any]:
    """The stored form of an incoming event: known fields only, strings cut to their columns,
    JSON values made canonicalisable. ``seq`` is assigned by the writer.

    Takes a mapping too: what the writer decodes from a stream entry (any producer's version)."""
    source: Mapping[str, Any] = event.to_dict() if isinstance(event, AuditEvent) else event
    out: dict[str, Any] = {}
    for name in FIELDS:
        if name == "seq":
            continue
        value = source.get(name)
        if name in WIDTHS:
            value = None if value is None else str(value)[: WIDTHS[name]]
        elif name == "reasons":
            value = jcs_safe(list(value)) if isinstance(value, (list, tuple)) else None
        elif name == "details":
            value = jcs_safe(dict(value)) if isinstance(value, dict) else None
        else:
            value = jcs_safe(value)
        out[name] = value
    if not out.get("kind"):
        out["kind"] = "unknown"
    try:
        # The fixed-width form (what every producer of ours sends): stored text sorts as time,
        # which the writer's checkpoint coverage relies on.
        out["created_at"] = format_ts(parse_ts(str(out.get("created_at"))))
    except ValueError:
        # Coverage is judged on creation times: an event without a readable one is stamped
        # with the time it reaches the writer.
        out["created_at"] = format_ts(utcnow())
    return out


def as_event(value: AuditEvent | Mapping[str, Any]) -> AuditEvent:
    """``value`` as an :class:`AuditEvent`. A mapping (a producer that amends its event as a
    dict: the decision recorder) is taken field by field as it is, unknown keys left out; the
    writer stores its normalized form (:func:`normalize`) either way. Not normalized here: this
    runs on the request path, the writer does not."""
    if isinstance(value, AuditEvent):
        return value
    fields: dict[str, Any] = {name: value.get(name) for name in AuditEvent.__struct_fields__}
    return AuditEvent(**fields)
