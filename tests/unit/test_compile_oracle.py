"""The compiled index agrees with pycasbin ``enforce`` on random policies and requests.

An organization's deny rules are policy rules with the ``deny`` effect (``policies/rules.py``)
for one agent or for every agent (``*``): the compiled decision (the manifest's grant, then the
rule index) is checked against pycasbin on both models (the gateway model's ``enforce_ex`` for
the grant, the rules model's for the deny)."""
from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from policies.capabilities import matches
from policies.compile import (
    CompiledOrg,
    ManifestSnapshot,
    OrgPolicySource,
    build_enforcer,
    casbin_decide,
    compile_org,
    subject,
)
from policies.rules import Rule, RuleContext, RuleIndex, build_rules_enforcer, casbin_verdict

# Small alphabets so that random patterns and requests actually collide.
SEGMENTS = ["crm", "crmx", "email", "read", "write", "delete", "a", "a-b", "x_1"]
UAPKS = ["bot-a", "bot-b", "bot-c"]
STATUSES = ["active", "active", "pending", "suspended", "revoked", "superseded", "rejected"]

segment = st.sampled_from(SEGMENTS)
pattern_segment = st.one_of(segment, st.just("*"))
patterns = st.builds(lambda a, b: f"{a}:{b}", pattern_segment, pattern_segment)
capabilities = st.builds(lambda a, b: f"{a}:{b}", segment, segment)


@st.composite
def manifests(draw: st.DrawFn) -> ManifestSnapshot:
    return ManifestSnapshot(
        manifest_id=draw(st.uuids()).hex,
        uapk_id=draw(st.sampled_from(UAPKS)),
        status=draw(st.sampled_from(STATUSES)),
        approved=tuple(draw(st.lists(patterns, max_size=5))),
        require_human_approval=tuple(draw(st.lists(patterns, max_size=3))),
        created_at=float(draw(st.integers(0, 100))),
    )


def deny(pattern: str, uapk_id: str | None = None, rule_id: str = "") -> Rule:
    """An org deny rule for one agent or (``uapk_id`` None) every agent, without conditions."""
    return Rule(rule_id or f"deny-{len(pattern)}-{uapk_id or 'all'}", subject(uapk_id) if uapk_id else "*",
                pattern, "deny")


def source(version: int, manifests: tuple[ManifestSnapshot, ...], denies: tuple[Rule, ...] = ()) -> OrgPolicySource:
    return OrgPolicySource("org", version, manifests, rules=RuleIndex.build(denies, 1 if denies else 0))


@st.composite
def sources(draw: st.DrawFn) -> OrgPolicySource:
    targets = draw(st.lists(st.tuples(patterns, st.one_of(st.none(), st.sampled_from(UAPKS))), max_size=4))
    rules = tuple(deny(p, u, f"r{i}") for i, (p, u) in enumerate(targets))
    return source(draw(st.integers(0, 5)), tuple(draw(st.lists(manifests(), max_size=6))), rules)


CTX = RuleContext()  # deny rules without conditions: the request's attributes do not matter


def index_decide(compiled: CompiledOrg, uapk: str, cap: str) -> tuple[bool, bool, str | None]:
    """(granted, needs a human, the deny rule's id) by the compiled index and rule index."""
    agent = compiled.agent(uapk)
    if agent is None or not agent.active:
        return False, False, None
    verdict = compiled.rules.evaluate(uapk, agent.team, cap, CTX)
    denied_by = verdict.rule.id if verdict.effect == "deny" and verdict.rule is not None else None
    return agent.grant(cap).granted and denied_by is None, agent.needs_human(cap) is not None, denied_by


# Look-alikes, every run (random draws find them only by chance): a ``*`` or a concrete segment
# matches one whole segment, never a prefix: crm:* is not crmx:read, a:read is not a-b:read
# (nor a:reader), *:write is not email:write-all.
LOOKALIKE_SOURCE = source(1, (
    ManifestSnapshot("m1", "bot-a", "active", approved=("crm:*", "a:read", "*:write"),
                     require_human_approval=("crm:*", "a:read")),
    ManifestSnapshot("m2", "bot-b", "active", approved=("*:*",), require_human_approval=("a:*", "*:read")),
), (deny("crm:*", "bot-b"), deny("a:write", None)))
# (uapk, capability, granted, needs a human) — by the grammar, not by either implementation.
LOOKALIKE_EXPECTED = [
    ("bot-a", "crm:read", True, True), ("bot-a", "crmx:read", False, False),
    ("bot-a", "a:read", True, True), ("bot-a", "a-b:read", False, False),
    ("bot-a", "x_1:write", True, False), ("bot-a", "a-b:write", True, False), ("bot-a", "a:write", False, False),
    ("bot-b", "crm:delete", False, False), ("bot-b", "crmx:delete", True, False),
    ("bot-b", "a:delete", True, True), ("bot-b", "a-b:delete", True, False),
    ("bot-b", "email:read", True, True), ("bot-b", "a-b:write", True, False),
    ("bot-a", "email:write-all", False, False), ("bot-a", "a:reader", False, False),
    ("bot-b", "email:reader", True, False), ("bot-b", "crmx:reader", True, False),
]
LOOKALIKE_REQUESTS = [(u, c) for u, c, _, _ in LOOKALIKE_EXPECTED]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(src=sources(), requests=st.lists(st.tuples(st.sampled_from(UAPKS + ["ghost"]), capabilities), min_size=1, max_size=15))
@example(src=LOOKALIKE_SOURCE, requests=LOOKALIKE_REQUESTS)
@example(src=source(0, (ManifestSnapshot("m", "bot-a", "active", approved=("a:*",)),), (deny("crm:delete", None),)),
         requests=[("bot-a", "a-b:read"), ("bot-a", "a:read"), ("bot-a", "crmx:delete"), ("bot-c", "a:read")])
def test_index_agrees_with_casbin(src: OrgPolicySource, requests: list[tuple[str, str]]) -> None:
    compiled = compile_org(src, default_per_hour=10, default_per_day=100)
    enforcer = build_enforcer(compiled.lines, compiled.lines2)
    rules_enforcer = build_rules_enforcer(compiled.rules.rules, {u: a.team for u, a in compiled.agents.items()})
    for uapk, cap in requests:
        grant_ok, human, explain = casbin_decide(enforcer, uapk, cap)
        effect, explained = casbin_verdict(rules_enforcer, uapk, cap, CTX)
        granted = grant_ok and effect != "deny"
        agent = compiled.agent(uapk)
        if agent is None or not agent.active:
            assert not grant_ok, (uapk, cap, compiled.lines)
            assert not human
            continue
        index_granted, index_human, denied_by = index_decide(compiled, uapk, cap)
        assert index_granted == granted, (uapk, cap, compiled.lines, compiled.rules.rules)
        assert index_human == human, (uapk, cap, compiled.lines2)
        grant = agent.grant(cap)
        assert grant.granted == grant_ok, (uapk, cap, compiled.lines, grant)
        assert grant.granted or grant.rule is None  # a refusal names no rule: nothing matched
        if grant.rule is not None:
            # the index names the allow line that granted; pycasbin explains with an allow line
            kind, _, pattern = grant.rule.partition(":")
            assert kind == "allow" and matches(pattern, cap)
            assert (subject(uapk), pattern, "allow") in compiled.lines
            assert explain and explain[2] == "allow" and matches(explain[1], cap)
        if effect == "deny":
            # pycasbin names a deny rule that matched; the index names a deny rule too
            line = explained["deny"]
            assert line[2] == "deny" and denied_by is not None
            assert matches(line[1], cap) and line[0] in ("*", subject(uapk))
        else:
            assert denied_by is None


def test_lookalikes_by_the_grammar() -> None:
    """The index and pycasbin agree with the grammar itself on the look-alikes (agreeing with
    each other is not enough: a prefix match in the shared matcher would fool both)."""
    compiled = compile_org(LOOKALIKE_SOURCE, default_per_hour=10, default_per_day=100)
    enforcer = build_enforcer(compiled.lines, compiled.lines2)
    rules_enforcer = build_rules_enforcer(compiled.rules.rules, {u: a.team for u, a in compiled.agents.items()})
    for uapk, cap, granted, human in LOOKALIKE_EXPECTED:
        assert index_decide(compiled, uapk, cap)[:2] == (granted, human), (uapk, cap)
        casbin_granted = casbin_decide(enforcer, uapk, cap)[0] and \
            casbin_verdict(rules_enforcer, uapk, cap, CTX)[0] != "deny"
        assert casbin_granted is granted, (uapk, cap)
        assert casbin_decide(enforcer, uapk, cap)[1] is human, (uapk, cap)


def test_deny_overrides_allow_for_one_agent_and_for_all() -> None:
    src = source(1, (
        ManifestSnapshot("m1", "bot-a", "active", approved=("crm:*", "email:send")),
        ManifestSnapshot("m2", "bot-b", "active", approved=("crm:*",)),
    ), (deny("crm:delete", "bot-a", "no-delete"), deny("*:send", None, "no-send")))
    compiled = compile_org(src, default_per_hour=1, default_per_day=1)
    rules = build_rules_enforcer(compiled.rules.rules, {})
    assert index_decide(compiled, "bot-a", "crm:delete") == (False, False, "no-delete")
    assert casbin_verdict(rules, "bot-a", "crm:delete", CTX)[0] == "deny"
    assert index_decide(compiled, "bot-b", "crm:delete") == (True, False, None)
    assert casbin_verdict(rules, "bot-b", "crm:delete", CTX)[0] is None
    assert index_decide(compiled, "bot-a", "email:send") == (False, False, "no-send")
    assert casbin_verdict(rules, "bot-a", "email:send", CTX)[0] == "deny"
    a = compiled.agent("bot-a")
    assert a is not None and a.grant("crm:read").rule == "allow:crm:*"


def test_compiled_policy_version_changes_with_content() -> None:
    m = ManifestSnapshot("m1", "bot-a", "active", approved=("crm:read",))
    one = compile_org(OrgPolicySource("org", 3, (m,)), default_per_hour=1, default_per_day=1)
    same = compile_org(OrgPolicySource("org", 3, (m,)), default_per_hour=1, default_per_day=1)
    other = compile_org(OrgPolicySource("org", 3, (ManifestSnapshot("m1", "bot-a", "suspended"),)),
                        default_per_hour=1, default_per_day=1)
    assert one.policy_version == same.policy_version != other.policy_version
    assert one.policy_version.startswith("3.")


def test_newest_active_manifest_decides() -> None:
    src = OrgPolicySource("org", 1, (
        ManifestSnapshot("old", "bot-a", "superseded", approved=("crm:read",), created_at=1),
        ManifestSnapshot("cur", "bot-a", "active", approved=("email:send",), created_at=2),
        ManifestSnapshot("new", "bot-a", "pending", approved=("files:read",), created_at=3),
    ))
    agent = compile_org(src, default_per_hour=1, default_per_day=1).agent("bot-a")
    assert agent is not None and agent.manifest_id == "cur" and agent.active
    assert agent.grant("email:send").granted and not agent.grant("crm:read").granted
    only_old = OrgPolicySource("org", 1, (
        ManifestSnapshot("a", "bot-a", "superseded", created_at=1),
        ManifestSnapshot("b", "bot-a", "revoked", created_at=2),
    ))
    agent = compile_org(only_old, default_per_hour=1, default_per_day=1).agent("bot-a")
    assert agent is not None and agent.status == "revoked" and not agent.grant("crm:read").granted
