"""An organization's gateway policy: Casbin lines, and the in-memory index compiled from them.

The source of truth is a Casbin policy for ``policies/gateway_model.conf``:

* ``p, agent:<uapk_id>, <pattern>, allow`` for every approved capability of the uapk's
  *active* manifest,
* ``p2, agent:<uapk_id>, <pattern>`` for every ``require_human_approval`` entry of the active
  manifest.

Manifests grant; the organization's policy rules (``policies/rules.py``, their own Casbin
model ``rules_model.conf``) then gate and narrow what was granted: an org's "deny" is a policy
rule with the ``deny`` effect, for one agent, a team or every agent.

pycasbin ``enforce`` walks every line per request; the gateway never calls it on the hot path.
``compile_org`` turns the same lines into per-agent hash sets (``PatternSet``): a concrete
capability ``res:act`` can only be matched by the four patterns ``res:act``, ``res:*``,
``*:act`` and ``*:*``, so a lookup is at most four set probes. ``tests/unit/
test_compile_oracle.py`` checks, on random policies, that the index and pycasbin agree.

A ``CompiledOrg`` is immutable: a change builds a new one and the gateway swaps one reference.
No HTTP, no SQL here.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from policies.capabilities import casbin_match, is_valid_pattern
from policies.rules import EMPTY_INDEX, RuleIndex

MODEL_PATH = Path(__file__).parent / "gateway_model.conf"
ACTIVE = "active"


def subject(uapk_id: str) -> str:
    return f"agent:{uapk_id}"


# --- the input: what the store loads ------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ManifestSnapshot:
    """One manifest row, as much of it as the gateway needs."""

    manifest_id: str
    uapk_id: str
    status: str
    approved: tuple[str, ...] = ()
    require_human_approval: tuple[str, ...] = ()
    max_actions_per_hour: int | None = None
    max_actions_per_day: int | None = None
    team: str | None = None
    manifest_hash: str = ""
    version: str = ""
    created_at: float = 0.0  # epoch seconds; orders versions of one uapk
    require_capability_token: bool = False


@dataclass(frozen=True, slots=True)
class OrgPolicySource:
    org_id: str
    version: int
    manifests: tuple[ManifestSnapshot, ...] = ()
    rules: RuleIndex = EMPTY_INDEX  # the org's live policy rules (policies/rules.py)
    shadow_rules: RuleIndex | None = None  # a candidate set deployed as shadow


# --- the compiled index --------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PatternSet:
    """Capability patterns split into concrete ones and ones with a ``*`` segment."""

    exact: frozenset[str] = frozenset()
    wild: frozenset[str] = frozenset()

    @classmethod
    def of(cls, patterns: Iterable[str]) -> PatternSet:
        exact: set[str] = set()
        wild: set[str] = set()
        for p in patterns:
            (wild if "*" in p else exact).add(p)
        return cls(frozenset(exact), frozenset(wild))

    def match(self, capability: str) -> str | None:
        """The pattern granting ``capability`` (concrete), most specific first, else None."""
        if capability in self.exact:
            return capability
        if self.wild:
            res, _, act = capability.partition(":")
            for candidate in (f"{res}:*", f"*:{act}", "*:*"):
                if candidate in self.wild:
                    return candidate
        return None

    def __bool__(self) -> bool:
        return bool(self.exact or self.wild)


_EMPTY = PatternSet()


@dataclass(frozen=True, slots=True)
class Grant:
    granted: bool
    rule: str | None  # "allow:<pattern>" (the approved capability that granted) / None


@dataclass(frozen=True, slots=True)
class AgentPolicy:
    uapk_id: str
    status: str  # of the active manifest, else of the newest version
    manifest_id: str | None = None
    manifest_version: str | None = None
    manifest_hash: str | None = None
    team: str | None = None
    allow: PatternSet = _EMPTY
    human: PatternSet = _EMPTY
    max_actions_per_hour: int = 0
    max_actions_per_day: int = 0
    require_capability_token: bool = False

    @property
    def active(self) -> bool:
        return self.status == ACTIVE

    def grant(self, capability: str) -> Grant:
        allowed = self.allow.match(capability)
        if allowed is None:
            return Grant(False, None)
        return Grant(True, f"allow:{allowed}")

    def needs_human(self, capability: str) -> str | None:
        return self.human.match(capability)


@dataclass(frozen=True)
class CompiledOrg:
    org_id: str
    version: int  # org_state.version the source was read at
    policy_version: str  # "<version>.<short hash of the compiled policy>"
    agents: Mapping[str, AgentPolicy]
    lines: tuple[tuple[str, ...], ...] = ()  # p lines
    lines2: tuple[tuple[str, ...], ...] = ()  # p2 lines
    rules: RuleIndex = EMPTY_INDEX  # policy rules: gate and narrow after the grant
    shadow: CompiledOrg | None = None  # the same org with the shadow rules (evaluated, never enforced)

    def agent(self, uapk_id: str) -> AgentPolicy | None:
        return self.agents.get(uapk_id)


# --- compilation ----------------------------------------------------------------------------
def _positive(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value


# Without an active version, the version that would be in force names the denial's status:
# a suspended one (reactivating it restores it as it was), else a pending one (approving it
# makes it active), else the newest of the rest. Not simply the newest version: after the
# active 1.0.1 is suspended while a newer 1.1.0 was rejected, the agent is denied because
# 1.0.1 is suspended, not because 1.1.0 was rejected.
_IN_FORCE_RANK = {ACTIVE: 3, "suspended": 2, "pending": 1}


def current_manifests(manifests: Iterable[ManifestSnapshot]) -> dict[str, ManifestSnapshot]:
    """Per uapk_id, the manifest that decides: the newest active one, else the version that
    would be in force (newest suspended, else newest pending, else newest)."""
    out: dict[str, ManifestSnapshot] = {}
    for m in manifests:
        cur = out.get(m.uapk_id)
        if cur is None:
            out[m.uapk_id] = m
            continue
        m_key = (_IN_FORCE_RANK.get(m.status, 0), m.created_at, m.manifest_id)
        cur_key = (_IN_FORCE_RANK.get(cur.status, 0), cur.created_at, cur.manifest_id)
        if m_key > cur_key:
            out[m.uapk_id] = m
    return out


def policy_lines(source: OrgPolicySource) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    """The Casbin ``p`` and ``p2`` lines of the org's effective policy (sorted, deduplicated).
    Invalid patterns are dropped (they were validated on the way in; never trust twice)."""
    p: set[tuple[str, ...]] = set()
    p2: set[tuple[str, ...]] = set()
    for m in current_manifests(source.manifests).values():
        if m.status != ACTIVE:
            continue
        for cap in m.approved:
            if is_valid_pattern(cap):
                p.add((subject(m.uapk_id), cap, "allow"))
        for cap in m.require_human_approval:
            if is_valid_pattern(cap):
                p2.add((subject(m.uapk_id), cap))
    return sorted(p), sorted(p2)


def index_lines(
    lines: Iterable[tuple[str, ...]], lines2: Iterable[tuple[str, ...]]
) -> tuple[dict[str, PatternSet], dict[str, PatternSet]]:
    """Casbin lines -> per-subject allow, per-subject human."""
    allow: dict[str, set[str]] = {}
    human: dict[str, set[str]] = {}
    for sub, obj, eft in lines:
        if eft == "allow":
            allow.setdefault(sub, set()).add(obj)
    for sub, obj in lines2:
        human.setdefault(sub, set()).add(obj)
    return (
        {s: PatternSet.of(v) for s, v in allow.items()},
        {s: PatternSet.of(v) for s, v in human.items()},
    )


def compile_org(source: OrgPolicySource, *, default_per_hour: int, default_per_day: int) -> CompiledOrg:
    """Build the whole index first; the caller publishes it by replacing one reference."""
    lines, lines2 = policy_lines(source)
    allow, human = index_lines(lines, lines2)
    agents: dict[str, AgentPolicy] = {}
    quota_doc: list[Any] = []
    for uapk_id, m in sorted(current_manifests(source.manifests).items()):
        sub = subject(uapk_id)
        hour = _positive(m.max_actions_per_hour) or default_per_hour
        day = _positive(m.max_actions_per_day) or default_per_day
        active = m.status == ACTIVE
        agents[uapk_id] = AgentPolicy(
            uapk_id=uapk_id,
            status=m.status,
            manifest_id=m.manifest_id,
            manifest_version=m.version,
            manifest_hash=m.manifest_hash,
            team=m.team,
            allow=allow.get(sub, _EMPTY) if active else _EMPTY,
            human=human.get(sub, _EMPTY) if active else _EMPTY,
            max_actions_per_hour=hour,
            max_actions_per_day=day,
            require_capability_token=bool(m.require_capability_token),
        )
        quota_doc.append([uapk_id, m.status, m.manifest_hash, hour, day, bool(m.require_capability_token)])
    doc: list[Any] = [lines, lines2, quota_doc]
    if source.rules:
        doc.append(source.rules.digest)
    digest = hashlib.sha256(json.dumps(doc, separators=(",", ":")).encode()).hexdigest()[:12]
    # "<state version>.<hash>", plus ".r<n>" naming the org's policy rule version n (if any).
    suffix = f".r{source.rules.version}" if source.rules.version else ""
    common: dict[str, Any] = dict(
        org_id=source.org_id,
        version=source.version,
        agents=MappingProxyType(agents),
        lines=tuple(lines),
        lines2=tuple(lines2),
    )
    shadow = None
    if source.shadow_rules is not None:
        shadow = CompiledOrg(policy_version=f"{source.version}.shadow.s{source.shadow_rules.version}",
                             rules=source.shadow_rules, **common)
    return CompiledOrg(policy_version=f"{source.version}.{digest}{suffix}", rules=source.rules, shadow=shadow, **common)


# --- pycasbin: explanations and the oracle --------------------------------------------------
def build_enforcer(lines: Iterable[tuple[str, ...]], lines2: Iterable[tuple[str, ...]] = ()) -> Any:
    """A pycasbin enforcer over the model and these lines, with ``capMatch`` registered.
    Used by tests (the oracle) and for explaining decisions, never per request."""
    import casbin

    model = casbin.model.Model()
    model.load_model(str(MODEL_PATH))
    enforcer = casbin.Enforcer(model)
    enforcer.add_function("capMatch", casbin_match)
    p = [list(line) for line in lines]
    p2 = [list(line) for line in lines2]
    if p:
        enforcer.add_named_policies("p", p)
    if p2:
        enforcer.add_named_policies("p2", p2)
    return enforcer


def casbin_decide(enforcer: Any, uapk_id: str, capability: str) -> tuple[bool, bool, list[str]]:
    """(granted, needs_human, explanation) according to pycasbin."""
    granted, explain = enforcer.enforce_ex(subject(uapk_id), capability)
    human = enforcer.enforce(enforcer.new_enforce_context("2"), subject(uapk_id), capability)
    return bool(granted), bool(human), list(explain)
