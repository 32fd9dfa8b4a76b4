"""The UAPK manifest document: validation and the human-readable diff between versions.

Pure functions: no HTTP, no SQL. ``check_document`` reports *every* problem at once, each
named by its dotted path (``agent.id``, ``capabilities.requested.2``); the API turns them
into a 400 (register) or into the ``errors`` list (validate).

Nothing is normalized: an id or capability with upper case, spaces, non-ASCII or control
characters (zero-width ones included) is rejected, never rewritten, so what is approved is
byte for byte what was submitted and what the hash covers.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from core.canonical import canonical_json, manifest_hash
from core.ids import UAPK_ID
from core.text import is_clean, text_issue
from policies.capabilities import is_valid_pattern

SUPPORTED_VERSION = "1.0"

TOP_LEVEL_KEYS = ("version", "agent", "capabilities", "constraints", "metadata")
AGENT_KEYS = ("id", "name", "version", "description", "organization", "team")
CAPABILITIES_KEYS = ("requested",)
CONSTRAINT_KEYS = ("max_actions_per_hour", "max_actions_per_day", "require_human_approval", "require_capability_token")

MAX_CAPABILITIES = 256
MAX_HUMAN_APPROVAL = 256
MAX_METADATA_BYTES = 16 * 1024
MAX_METADATA_DEPTH = 16
MAX_DESCRIPTION = 500
MAX_TEXT = 200
MAX_VERSION_LEN = 64
MAX_RATE = 10**9
MAX_ISSUES = 100
MAX_FIELD_NAME = 64

AGENT_ID = UAPK_ID  # core/ids.py: the one UAPK-id grammar (anchored)
AGENT_ID_MESSAGE = "Agent ID must be lowercase alphanumeric with hyphens"
# Semantic Versioning 2.0.0 (https://semver.org), ASCII only, matched in full.
SEMVER = re.compile(
    r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(?:-((?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?",
    re.ASCII,
)


@dataclass(frozen=True)
class Problem:
    field: str
    message: str


@dataclass
class Report:
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    manifest_hash: str | None = None

    @property
    def valid(self) -> bool:
        return not self.errors


class _Collector:
    def __init__(self) -> None:
        self.errors: list[Problem] = []

    def add(self, path: str, message: str) -> None:
        if len(self.errors) < MAX_ISSUES:
            self.errors.append(Problem(path, message))


def _bad_chars(value: str) -> bool:
    """Characters a person reading the text could be misled by: the one rule, core/text.py."""
    return not is_clean(value)


def _key_name(key: str) -> str:
    shown = key if not _bad_chars(key) else key.encode("unicode_escape", "backslashreplace").decode("ascii")
    return shown[:MAX_FIELD_NAME]


def _unknown_keys(c: _Collector, obj: dict[str, Any], allowed: tuple[str, ...], prefix: str) -> None:
    for key in obj:
        if key not in allowed:
            c.add(prefix + _key_name(str(key)), f"Unknown field; allowed: {', '.join(allowed)}.")


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(c: _Collector, path: str, value: Any, *, required: bool, max_len: int) -> None:
    if value is None:
        if required:
            c.add(path, "Field is required.")
        return
    if not isinstance(value, str):
        c.add(path, "Must be a string.")
    elif required and not value.strip():
        c.add(path, "Must not be empty.")
    elif len(value) > max_len:
        c.add(path, f"Must be at most {max_len} characters.")
    elif (problem := text_issue(value)) is not None:
        c.add(path, problem)


def _capability_list(c: _Collector, path: str, value: Any, *, limit: int, required: bool) -> None:
    if value is None:
        if required:
            c.add(path, "Field is required.")
        return
    if not isinstance(value, list):
        c.add(path, "Must be an array of capabilities.")
        return
    if len(value) > limit:
        c.add(path, f"At most {limit} entries.")
        return
    if required and not value:
        c.add(path, "At least one capability must be requested.")
        return
    seen: set[str] = set()
    for i, cap in enumerate(value):
        # is_valid_pattern anchors with ``$`` (which accepts a trailing newline): refuse any
        # control character here first, so nothing is ever normalized or silently accepted.
        if not isinstance(cap, str) or _bad_chars(cap) or not is_valid_pattern(cap):
            c.add(
                f"{path}.{i}",
                "Must be resource:action, each segment lowercase letters, digits, '_' or '-', or a whole '*'.",
            )
        elif cap in seen:
            c.add(f"{path}.{i}", f"Duplicate capability {cap}.")
        else:
            seen.add(cap)


def _depth_ok(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return False
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return True


def _positive_int(c: _Collector, path: str, value: Any) -> None:
    if not _is_int(value) or value < 1:
        c.add(path, "Must be a positive integer.")
    elif value > MAX_RATE:
        c.add(path, f"Must be at most {MAX_RATE}.")


def _overlap(a: str, b: str) -> bool:
    """Some capability matches both patterns: segment by segment equal, or either is ``*``."""
    a_res, _, a_act = a.partition(":")
    b_res, _, b_act = b.partition(":")
    return (a_res == b_res or "*" in (a_res, b_res)) and (a_act == b_act or "*" in (a_act, b_act))


def _valid_patterns(value: Any) -> list[str] | None:
    if not isinstance(value, list) or not all(isinstance(v, str) and not _bad_chars(v) and is_valid_pattern(v) for v in value):
        return None
    return value


def _human_approval_outside(requested: Any, human: Any) -> list[Problem]:
    """A ``require_human_approval`` entry that no requested capability overlaps never applies:
    the gateway denies that capability before human approval is looked at. Usually a typo or
    a capability the author forgot to request, so it is named (a warning: the document is
    still valid). Only checked when both lists are well-formed (otherwise they are errors)."""
    req, entries = _valid_patterns(requested), _valid_patterns(human)
    if req is None or entries is None:
        return []
    return [
        Problem(f"constraints.require_human_approval.{i}",
                f"{cap} is not covered by capabilities.requested, so this entry never applies.")
        for i, cap in enumerate(entries)
        if not any(_overlap(cap, r) for r in req)
    ][:MAX_ISSUES]


def check_document(document: Any) -> Report:
    """Every problem of a manifest document, plus warnings and (when valid) its hash."""
    c = _Collector()
    warnings: list[Problem] = []
    if not isinstance(document, dict):
        c.add("body", "The manifest must be a JSON object.")
        return Report(c.errors, warnings)
    _unknown_keys(c, document, TOP_LEVEL_KEYS, "")

    version = document.get("version")
    if version is None:
        c.add("version", "Field is required.")
    elif version != SUPPORTED_VERSION:
        c.add("version", f'Unsupported manifest version; must be "{SUPPORTED_VERSION}".')

    agent = document.get("agent")
    if agent is None:
        c.add("agent", "Field is required.")
    elif not isinstance(agent, dict):
        c.add("agent", "Must be an object.")
    else:
        _unknown_keys(c, agent, AGENT_KEYS, "agent.")
        agent_id = agent.get("id")
        if agent_id is None:
            c.add("agent.id", "Field is required.")
        elif not isinstance(agent_id, str) or not AGENT_ID.fullmatch(agent_id):
            c.add("agent.id", AGENT_ID_MESSAGE)
        _text(c, "agent.name", agent.get("name"), required=True, max_len=MAX_TEXT)
        agent_version = agent.get("version")
        if agent_version is None:
            c.add("agent.version", "Field is required.")
        elif (
            not isinstance(agent_version, str)
            or len(agent_version) > MAX_VERSION_LEN
            or not SEMVER.fullmatch(agent_version)
        ):
            c.add("agent.version", "Must be a semantic version (semver 2.0.0), e.g. 1.0.0.")
        _text(c, "agent.description", agent.get("description"), required=False, max_len=MAX_DESCRIPTION)
        _text(c, "agent.organization", agent.get("organization"), required=False, max_len=MAX_TEXT)
        _text(c, "agent.team", agent.get("team"), required=False, max_len=MAX_TEXT)

    capabilities = document.get("capabilities")
    if capabilities is None:
        c.add("capabilities", "Field is required.")
    elif not isinstance(capabilities, dict):
        c.add("capabilities", "Must be an object.")
    else:
        _unknown_keys(c, capabilities, CAPABILITIES_KEYS, "capabilities.")
        _capability_list(c, "capabilities.requested", capabilities.get("requested"), limit=MAX_CAPABILITIES, required=True)

    constraints = document.get("constraints")
    if constraints is not None and not isinstance(constraints, dict):
        c.add("constraints", "Must be an object.")
    else:
        constraints = constraints or {}
        _unknown_keys(c, constraints, CONSTRAINT_KEYS, "constraints.")
        for key in ("max_actions_per_hour", "max_actions_per_day"):
            if key in constraints:
                _positive_int(c, f"constraints.{key}", constraints[key])
        if "require_human_approval" in constraints:
            _capability_list(
                c, "constraints.require_human_approval", constraints["require_human_approval"],
                limit=MAX_HUMAN_APPROVAL, required=False,
            )
        if "require_capability_token" in constraints and not isinstance(constraints["require_capability_token"], bool):
            c.add("constraints.require_capability_token", "Must be true or false.")
        if constraints.get("max_actions_per_hour") is None and constraints.get("max_actions_per_day") is None:
            warnings.append(Problem("constraints", "No rate limits defined, defaults will apply"))
        requested = capabilities.get("requested") if isinstance(capabilities, dict) else None
        warnings.extend(_human_approval_outside(requested, constraints.get("require_human_approval")))

    if "metadata" in document:
        metadata = document["metadata"]
        if not isinstance(metadata, dict):
            c.add("metadata", "Must be an object.")
        elif not _depth_ok(metadata, MAX_METADATA_DEPTH):
            c.add("metadata", f"Must be nested at most {MAX_METADATA_DEPTH} levels deep.")
        else:
            try:
                size = len(canonical_json(metadata))
            except Exception:  # non-representable numbers (|int| > 2^53), bad strings
                c.add("metadata", "Must be representable as RFC 8785 canonical JSON (integers within +/-2^53).")
            else:
                if size > MAX_METADATA_BYTES:
                    c.add("metadata", f"Must be at most {MAX_METADATA_BYTES} bytes as canonical JSON.")

    report = Report(c.errors, warnings)
    if report.valid:
        try:
            report.manifest_hash = manifest_hash(document)
        except Exception:  # pragma: no cover - every field was checked above
            report.errors.append(Problem("body", "The manifest cannot be canonicalized (RFC 8785)."))
    return report


# --- the diff between two versions ------------------------------------------------------
def _section(doc: dict[str, Any], key: str) -> dict[str, Any]:
    """``doc[key]`` when it is an object, else an empty one."""
    value = doc.get(key)
    return value if isinstance(value, dict) else {}


def _constraints(doc: dict[str, Any]) -> dict[str, Any]:
    return _section(doc, "constraints")


def _requested(doc: dict[str, Any]) -> list[str]:
    caps = doc.get("capabilities")
    value = caps.get("requested") if isinstance(caps, dict) else None
    return [str(v) for v in value] if isinstance(value, list) else []


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    return str(value)


def _scalar_change(lines: list[str], name: str, old: Any, new: Any) -> None:
    if old == new and type(old) is type(new):
        return
    if old is None:
        lines.append(f"Set {name} to {_show(new)}")
    elif new is None:
        lines.append(f"Removed {name} (was {_show(old)})")
    else:
        lines.append(f"Changed {name} from {_show(old)} to {_show(new)}")


def diff_lines(previous: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """What changed from ``previous`` to ``current``, one readable line per change.

    ``None`` for the first version gives ``["Initial registration"]``. The agent version
    itself is not listed (it always changes between versions)."""
    if previous is None:
        return ["Initial registration"]
    lines: list[str] = []
    old_caps, new_caps = _requested(previous), _requested(current)
    lines += [f"Added {cap} capability" for cap in new_caps if cap not in old_caps]
    lines += [f"Removed {cap} capability" for cap in old_caps if cap not in new_caps]

    old_c, new_c = _constraints(previous), _constraints(current)
    for key in ("max_actions_per_hour", "max_actions_per_day", "require_capability_token"):
        _scalar_change(lines, key, old_c.get(key), new_c.get(key))
    old_h = [str(v) for v in old_c.get("require_human_approval") or []]
    new_h = [str(v) for v in new_c.get("require_human_approval") or []]
    lines += [f"Added {cap} to require_human_approval" for cap in new_h if cap not in old_h]
    lines += [f"Removed {cap} from require_human_approval" for cap in old_h if cap not in new_h]

    old_a, new_a = _section(previous, "agent"), _section(current, "agent")
    for key in ("name", "organization", "team"):
        _scalar_change(lines, f"agent.{key}", old_a.get(key), new_a.get(key))
    if old_a.get("description") != new_a.get("description"):
        if old_a.get("description") is None:
            lines.append("Added agent.description")
        elif new_a.get("description") is None:
            lines.append("Removed agent.description")
        else:
            lines.append("Changed agent.description")

    old_m, new_m = _section(previous, "metadata"), _section(current, "metadata")
    for key in new_m:
        if key not in old_m:
            lines.append(f"Added metadata.{key}")
        elif old_m[key] != new_m[key]:
            lines.append(f"Changed metadata.{key}")
    lines += [f"Removed metadata.{key}" for key in old_m if key not in new_m]

    return lines or ["No changes besides the agent version"]


def effective_limits(document: dict[str, Any], default_per_hour: int, default_per_day: int) -> dict[str, int]:
    """The quotas the gateway applies: the manifest's, else the server defaults."""
    c = _constraints(document)
    hour = c.get("max_actions_per_hour")
    day = c.get("max_actions_per_day")
    return {
        "max_actions_per_hour": hour if _is_int(hour) else default_per_hour,
        "max_actions_per_day": day if _is_int(day) else default_per_day,
    }
