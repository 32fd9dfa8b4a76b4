"""The compiled index agrees with pycasbin ``enforce`` on random policies and requests."""
from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from policies.capabilities import matches
from policies.compile import (
    DenyRule,
    ManifestSnapshot,
    OrgPolicySource,
    build_enforcer,
    casbin_decide,
    compile_org,
    subject,
)

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


@st.composite
def sources(draw: st.DrawFn) -> OrgPolicySource:
    rules = draw(st.lists(st.builds(DenyRule, patterns, st.one_of(st.none(), st.sampled_from(UAPKS))), max_size=4))
    return OrgPolicySource("org", draw(st.integers(0, 5)), tuple(draw(st.lists(manifests(), max_size=6))), tuple(rules))


# Look-alikes, every run (random draws find them only by chance): a ``*`` or a concrete segment
# matches one whole segment, never a prefix: crm:* is not crmx:read, a:read is not a-b:read
# (nor a:reader), *:write is not email:write-all.
LOOKALIKE_SOURCE = OrgPolicySource("org", 1, (
    ManifestSnapshot("m1", "bot-a", "active", approved=("crm:*", "a:read", "*:write"),
                     require_human_approval=("crm:*", "a:read")),
    ManifestSnapshot("m2", "bot-b", "active", approved=("*:*",), require_human_approval=("a:*", "*:read")),
), (DenyRule("crm:*", "bot-b"), DenyRule("a:write", None)))
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
@example(src=OrgPolicySource("org", 0, (ManifestSnapshot("m", "bot-a", "active", approved=("a:*",)),),
                             (DenyRule("crm:delete", None),)),
         requests=[("bot-a", "a-b:read"), ("bot-a", "a:read"), ("bot-a", "crmx:delete"), ("bot-c", "a:read")])
def test_index_agrees_with_casbin(src: OrgPolicySource, requests: list[tuple[str, str]]) -> None:
    compiled = compile_org(src, default_per_hour=10, default_per_day=100)
    enforcer = build_enforcer(compiled.lines, compiled.lines2)
    for uapk, cap in requests:
        granted, human, explain = casbin_decide(enforcer, uapk, cap)
        agent = compiled.agent(uapk)
        if agent is None or not agent.active:
            assert not granted, (uapk, cap, compiled.lines)
            assert not human
            continue
        grant = agent.grant(cap)
        assert grant.granted == granted, (uapk, cap, compiled.lines, grant)
        assert (agent.needs_human(cap) is not None) == human, (uapk, cap, compiled.lines2)
        if grant.rule is not None:
            kind, _, pattern = grant.rule.partition(":")
            assert matches(pattern, cap)
            line = (subject(uapk), pattern, kind)
            assert line in compiled.lines or (kind == "deny" and ("*", pattern, "deny") in compiled.lines)
        if not granted and explain:
            # pycasbin names a deny line that matched; the index names a deny rule too.
            assert explain[2] == "deny" and grant.rule is not None and grant.rule.startswith("deny:")


def test_lookalikes_by_the_grammar() -> None:
    """The index and pycasbin agree with the grammar itself on the look-alikes (agreeing with
    each other is not enough: a prefix match in the shared matcher would fool both)."""
    compiled = compile_org(LOOKALIKE_SOURCE, default_per_hour=10, default_per_day=100)
    enforcer = build_enforcer(compiled.lines, compiled.lines2)
    for uapk, cap, granted, human in LOOKALIKE_EXPECTED:
        agent = compiled.agent(uapk)
        assert agent is not None
        assert agent.grant(cap).granted is granted, (uapk, cap)
        assert casbin_decide(enforcer, uapk, cap)[0] is granted, (uapk, cap)
        assert (agent.needs_human(cap) is not None) is human, (uapk, cap)
        assert casbin_decide(enforcer, uapk, cap)[1] is human, (uapk, cap)


def test_deny_overrides_allow_for_one_agent_and_for_all() -> None:
    src = OrgPolicySource("org", 1, (
        ManifestSnapshot("m1", "bot-a", "active", approved=("crm:*", "email:send")),
        ManifestSnapshot("m2", "bot-b", "active", approved=("crm:*",)),
    ), (DenyRule("crm:delete", "bot-a"), DenyRule("*:send", None)))
    compiled = compile_org(src, default_per_hour=1, default_per_day=1)
    enforcer = build_enforcer(compiled.lines, compiled.lines2)
    a, b = compiled.agent("bot-a"), compiled.agent("bot-b")
    assert a is not None and b is not None
    assert a.grant("crm:delete").rule == "deny:crm:delete" and not enforcer.enforce("agent:bot-a", "crm:delete")
    assert b.grant("crm:delete").granted and enforcer.enforce("agent:bot-b", "crm:delete")
    assert not a.grant("email:send").granted and not enforcer.enforce("agent:bot-a", "email:send")
    assert a.grant("crm:read").rule == "allow:crm:*"


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
