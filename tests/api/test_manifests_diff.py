"""policies.manifest: the history diff lines and hash/validation properties (pure functions)."""
from __future__ import annotations

import copy
import hashlib
from typing import Any

import rfc8785
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from core.canonical import manifest_hash
from policies.manifest import check_document, diff_lines, effective_limits
from tests.api.test_manifests_support import doc, reorder


def test_first_version_is_initial_registration() -> None:
    assert diff_lines(None, doc()) == ["Initial registration"]


def test_only_the_version_changed() -> None:
    assert diff_lines(doc(), doc(version="1.0.1")) == ["No changes besides the agent version"]


def test_capability_and_constraint_lines() -> None:
    old = doc()
    new = copy.deepcopy(old)
    new["agent"]["version"] = "1.1.0"
    new["capabilities"]["requested"] = ["email:read", "crm:read", "crm:update", "crm:delete"]
    new["constraints"] = {
        "max_actions_per_hour": 200,
        "require_human_approval": ["crm:delete", "email:send"],
        "require_capability_token": True,
    }
    assert diff_lines(old, new) == [
        "Added crm:delete capability",
        "Removed email:send capability",
        "Changed max_actions_per_hour from 100 to 200",
        "Removed max_actions_per_day (was 500)",
        "Set require_capability_token to true",
        "Added email:send to require_human_approval",
    ]
    back = diff_lines(new, old)
    assert "Set max_actions_per_day to 500" in back
    assert "Removed require_capability_token (was true)" in back
    assert "Removed email:send from require_human_approval" in back


def test_agent_and_metadata_lines() -> None:
    old = doc()
    new = copy.deepcopy(old)
    new["agent"]["name"] = "Support Bot"
    new["agent"]["team"] = "sales"
    del new["agent"]["organization"]
    new["agent"]["description"] = "Something else"
    new["metadata"] = {"contact": "other@acme.com", "owner": "ops"}
    assert diff_lines(old, new) == [
        'Changed agent.name from "Customer Support Bot" to "Support Bot"',
        'Removed agent.organization (was "acme-corp")',
        'Changed agent.team from "support" to "sales"',
        "Changed agent.description",
        "Changed metadata.contact",
        "Added metadata.owner",
        "Removed metadata.documentation",
    ]


def test_effective_limits_default_each_missing_limit() -> None:
    d = doc()
    assert effective_limits(d, 7, 9) == {"max_actions_per_hour": 100, "max_actions_per_day": 500}
    del d["constraints"]["max_actions_per_day"]
    assert effective_limits(d, 7, 9) == {"max_actions_per_hour": 100, "max_actions_per_day": 9}
    del d["constraints"]
    assert effective_limits(d, 7, 9) == {"max_actions_per_hour": 7, "max_actions_per_day": 9}


_segment = st.from_regex(r"\A(?:[a-z0-9_-]{1,12}|\*)\Z")
_capability = st.builds(lambda a, b: f"{a}:{b}", _segment, _segment)
_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**53) + 1, 2**53 - 1), st.text(max_size=20),
                       st.floats(allow_nan=False, allow_infinity=False))
_metadata = st.dictionaries(st.text(max_size=10), st.recursive(
    _json_leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
), max_size=6)


@hsettings(max_examples=150, deadline=None)
@given(caps=st.lists(_capability, min_size=1, max_size=20, unique=True), metadata=_metadata,
       hour=st.integers(1, 10**9), team=st.text(alphabet="abcdefghij -", min_size=1, max_size=20))
def test_valid_documents_hash_alike_in_any_key_order(caps: list[str], metadata: dict[str, Any], hour: int, team: str) -> None:
    d = doc(team=team)
    d["capabilities"]["requested"] = caps
    d["constraints"]["max_actions_per_hour"] = hour
    d["metadata"] = metadata
    report = check_document(d)
    assert report.valid, report.errors
    assert report.manifest_hash == manifest_hash(reorder(d))
    assert report.manifest_hash == "sha256:" + hashlib.sha256(rfc8785.dumps(d)).hexdigest()


@hsettings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=70))
def test_agent_id_rule(agent_id: str) -> None:
    import re

    d = doc()
    d["agent"]["id"] = agent_id
    ok = re.fullmatch(r"[a-z0-9][a-z0-9-]{1,62}", agent_id, re.ASCII) is not None and agent_id.isascii()
    report = check_document(d)
    assert report.valid == ok
    if not ok:
        assert [(p.field, p.message) for p in report.errors] == [("agent.id", "Agent ID must be lowercase alphanumeric with hyphens")]
