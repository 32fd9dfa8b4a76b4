"""policies/tool_names.py: MCP tool names as capabilities, deterministic, always in the grammar,
collisions found (pure: no services)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.capabilities import MAX_LEN, is_concrete
from policies.tool_names import (
    MAX_SERVER_NAME,
    ToolNameCollision,
    ToolNameError,
    collisions,
    is_server_name,
    map_tools,
    mcp_capability,
    to_segment,
)

servers = st.from_regex(r"\A[a-z0-9_-]{1,48}\Z", fullmatch=True)
tool_names = st.text(min_size=1, max_size=300)


@pytest.mark.parametrize(("tool", "segment"), [
    ("read", "read"),
    ("get_user", "get_user"),
    ("getUser", "get_user"),
    ("GetUser", "get_user"),
    ("listIssues2", "list_issues2"),
    ("issues.list", "issues_list"),
    ("send-email", "send-email"),
    ("Créer facture", "cr_er_facture"),
    ("HTTPServer", "httpserver"),
    ("v2Read", "v2_read"),
    ("a:b", "a_b"),
    ("*", "_"),
])
def test_examples(tool: str, segment: str) -> None:
    assert to_segment(tool) == segment
    assert mcp_capability("crm", tool) == f"crm:{segment}"


def test_a_long_name_keeps_a_prefix_and_a_hash_and_fits() -> None:
    server = "s" * MAX_SERVER_NAME
    a, b = "x" * 200 + "a", "x" * 200 + "b"
    ca, cb = mcp_capability(server, a), mcp_capability(server, b)
    assert len(ca) == MAX_LEN and len(cb) == MAX_LEN
    assert ca != cb  # the hash of the whole name keeps names with one long prefix apart
    assert ca.split(":")[1].startswith("xxxx")


def test_refusals() -> None:
    with pytest.raises(ToolNameError):
        to_segment("")
    with pytest.raises(ToolNameError):
        mcp_capability("Not A Server", "read")
    assert not is_server_name("a" * (MAX_SERVER_NAME + 1)) and not is_server_name("") and not is_server_name("a:b")


def test_collisions_are_named() -> None:
    assert collisions("crm", ["get_user", "getUser", "get.user", "list"]) == [
        collisions("crm", ["get_user", "getUser", "get.user"])[0]]
    found = collisions("crm", ["get_user", "getUser", "get.user", "list"])
    assert found[0].capability == "crm:get_user" and found[0].names == ("get_user", "getUser", "get.user")
    with pytest.raises(ToolNameCollision) as exc:
        map_tools("crm", ["getUser", "get_user"])
    assert "crm:get_user" in str(exc.value)
    # The same name twice is one tool.
    assert map_tools("crm", ["read", "read"]) == {"read": "crm:read"}


@settings(max_examples=300)
@given(servers, tool_names)
def test_always_a_valid_concrete_capability_and_deterministic(server: str, tool: str) -> None:
    capability = mcp_capability(server, tool)
    assert is_concrete(capability) and len(capability) <= MAX_LEN
    assert capability.split(":")[0] == server
    assert mcp_capability(server, tool) == capability


@given(st.from_regex(r"\A[a-z0-9_-]{1,60}\Z", fullmatch=True))
def test_a_name_already_in_the_grammar_maps_to_itself(tool: str) -> None:
    assert to_segment(tool) == tool


@settings(max_examples=300)
@given(servers, st.lists(tool_names, max_size=20))
def test_distinct_names_that_collide_are_detected(server: str, tools: list[str]) -> None:
    by_cap: dict[str, set[str]] = {}
    for t in tools:
        by_cap.setdefault(mcp_capability(server, t), set()).add(t)
    expected = {cap: names for cap, names in by_cap.items() if len(names) > 1}
    found = collisions(server, tools)
    assert {c.capability: set(c.names) for c in found} == expected
    if expected:
        with pytest.raises(ToolNameCollision):
            map_tools(server, tools)
    else:
        mapped = map_tools(server, tools)
        assert len(set(mapped.values())) == len(mapped) == len(set(tools))


@given(servers, st.text(alphabet="abcXYZ._ -", min_size=1, max_size=12))
def test_lossy_lookalikes_collide_visibly(server: str, tool: str) -> None:
    """Changing separators or case never silently yields two grants for one capability."""
    variant = tool.replace(".", "_")
    if variant != tool:
        assert collisions(server, [tool, variant])
