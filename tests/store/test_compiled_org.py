"""store.compiled_org.load_compiled_org: the one loader of the server, the CLI and tests
(both backends)."""
from __future__ import annotations

from typing import Any

from policies.rules import parse_rules
from store import policy_rules
from store.compiled_org import load_compiled_org
from tests.gateway.factories import add_manifest


async def test_the_server_and_a_direct_load_compile_the_same_org(client: Any, org: Any) -> None:
    runtime = client.app.state.runtime
    s = runtime.settings
    await add_manifest(runtime, org.org_id, "support-bot", approved=["crm:*", "email:send"], max_per_hour=7)
    await add_manifest(runtime, org.org_id, "idle-bot", status="suspended")
    live = parse_rules([{"id": "no-delete", "subject": "*", "capability": "crm:delete", "effect": "deny"}], "rules")
    await policy_rules.add_rule(runtime, org.org_id, live[0], "test")
    await policy_rules.deploy_shadow(runtime, org.org_id, [], "test")

    served = await client.app.state.gateway.state.refresh(org.org_id)
    limits = {"default_per_hour": s.default_max_actions_per_hour, "default_per_day": s.default_max_actions_per_day}
    from_factory = await load_compiled_org(runtime.sessions, org.org_id, **limits)
    async with runtime.sessions() as session:
        from_session = await load_compiled_org(session, org.org_id, **limits)

    for loaded in (from_factory, from_session):
        assert loaded == served  # same version, policy version, agents, rules, shadow
    assert served.policy_version.endswith(".r1") and served.shadow is not None
    agent = served.agent("support-bot")
    assert agent is not None and agent.status == "active" and agent.max_actions_per_hour == 7
    idle = served.agent("idle-bot")
    assert idle is not None and idle.status == "suspended"


async def test_an_org_without_anything_loads_empty(client: Any, org: Any) -> None:
    compiled = await load_compiled_org(client.app.state.runtime.sessions, org.org_id, default_per_hour=1,
                                       default_per_day=1)
    assert compiled.org_id == org.org_id and dict(compiled.agents) == {} and compiled.shadow is None
