"""A ``require_human_approval`` entry outside ``capabilities.requested`` never applies (the
gateway denies the capability before human approval is looked at): validate warns about it."""
from __future__ import annotations

from typing import Any

import pytest

from policies.manifest import check_document
from tests.api.test_manifests_support import base, doc
from tests.conftest import Org

RATE_WARNING = {"field": "constraints", "message": "No rate limits defined, defaults will apply"}


def _doc(requested: list[str], human: Any) -> dict[str, Any]:
    d = doc()
    d["capabilities"]["requested"] = requested
    d["constraints"]["require_human_approval"] = human
    return d


@pytest.mark.parametrize("requested,human,outside", [
    (["crm:read", "crm:update"], ["crm:delete"], [0]),
    (["crm:read"], ["crm:read", "crm:delete", "email:send"], [1, 2]),
    (["crm:*"], ["crm:delete"], []),  # covered by a wildcard request
    (["crm:read"], ["crm:*"], []),  # the entry's wildcard applies to crm:read
    (["*:read"], ["crm:read", "crm:delete"], [1]),
    (["email:send"], ["*:*"], []),
    (["email:send"], [], []),
])
def test_entries_outside_requested_are_warned_about(requested: list[str], human: list[str], outside: list[int]) -> None:
    report = check_document(_doc(requested, human))
    assert report.valid
    fields = [w.field for w in report.warnings if w.field.startswith("constraints.require_human_approval")]
    assert fields == [f"constraints.require_human_approval.{i}" for i in outside]
    for w in report.warnings:
        if w.field.startswith("constraints.require_human_approval"):
            i = int(w.field.rsplit(".", 1)[1])
            assert w.message == f"{human[i]} is not covered by capabilities.requested, so this entry never applies."


def test_no_warning_when_either_list_is_invalid() -> None:
    # The bad list is an error; no advice is derived from it.
    report = check_document(_doc(["crm:read"], ["CRM:Delete"]))
    assert not report.valid and not any(w.field.startswith("constraints.require_human_approval") for w in report.warnings)
    report = check_document(_doc(["crm read"], ["crm:delete"]))
    assert not report.valid and not any(w.field.startswith("constraints.require_human_approval") for w in report.warnings)


async def test_validate_returns_the_warning_and_register_still_accepts(client: Any, org: Org) -> None:
    d = _doc(["email:send", "crm:read"], ["crm:delete", "crm:read"])
    del d["constraints"]["max_actions_per_hour"], d["constraints"]["max_actions_per_day"]
    v = await client.post(f"{base(org)}/validate", json=d, headers=org.headers)
    assert v.status_code == 200, v.text
    body = v.json()
    assert body["valid"] is True and body["manifest_hash"].startswith("sha256:")
    assert body["warnings"] == [
        RATE_WARNING,
        {"field": "constraints.require_human_approval.0",
         "message": "crm:delete is not covered by capabilities.requested, so this entry never applies."},
    ]
    # A warning is advice: the document registers.
    r = await client.post(base(org), json=d, headers=org.headers)
    assert r.status_code == 201, r.text
    assert r.json()["manifest_hash"] == body["manifest_hash"]
