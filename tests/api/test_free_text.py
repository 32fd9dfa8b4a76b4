"""Every free-text field of the management API follows the one text rule (core/text.py).

Regression tests for issue 12 ("control character" written six ways, and they disagreed):
manifest transition notes and reasons accepted U+202E (a bidi override that makes
``txt.exe`` read as ``exe.txt`` on an approver's screen); the manifest document's own list
missed invisible characters such as the soft hyphen; a policy rule's ``team:`` subject accepted
bidi overrides and C1 controls."""
from __future__ import annotations

from typing import Any

import pytest

from tests.api.test_manifests_support import act, base, doc, register
from tests.conftest import Org, assert_error, make_key

RLO = "\u202e"  # RIGHT-TO-LEFT OVERRIDE


@pytest.fixture
def settings(settings_factory: Any) -> Any:
    return settings_factory(rate_limits_enabled=False)


@pytest.mark.parametrize("action,field", [("approve", "notes"), ("reject", "reason"), ("reject", "notes")])
async def test_manifest_transition_texts_refuse_bidi_overrides(client: Any, org: Org, action: str, field: str) -> None:
    mid = (await register(client, org))["manifest_id"]
    body = assert_error(await act(client, org, mid, action, {field: f"looks fine {RLO}exe.txt"}), 400, "VALIDATION_ERROR")
    assert body["details"] == [{"field": field, "issue": body["details"][0]["issue"]}]
    assert "U+202E" in body["details"][0]["issue"]
    got = (await client.get(f"{base(org)}/{mid}", headers=org.headers)).json()
    assert got["status"] == "pending"


async def test_manifest_transition_notes_may_have_several_lines(client: Any, org: Org) -> None:
    mid = (await register(client, org))["manifest_id"]
    r = await act(client, org, mid, "approve", {"notes": "line one\nline two\r\n\tindented"})
    assert r.status_code == 200, r.text
    assert r.json()["notes"] == "line one\nline two\r\n\tindented"


async def test_manifest_document_text_refuses_invisible_characters(client: Any, org: Org) -> None:
    r = await client.post(base(org), json=doc(name="Refund\u00adBot"), headers=org.headers)
    body = assert_error(r, 400, "VALIDATION_ERROR")
    assert [d["field"] for d in body["details"]] == ["agent.name"]
    assert "U+00AD" in body["details"][0]["issue"]


@pytest.mark.parametrize("subject", [f"team:sup{RLO}port", "team:sup\x85port", "team:sup\x7fport", "team:sup\u200bport"])
async def test_policy_team_subject_follows_the_text_rule(client: Any, org: Org, subject: str) -> None:
    rule = {"subject": subject, "capability": "crm:delete", "effect": "deny"}
    body = assert_error(await client.post(f"/api/v1/orgs/{org.org_id}/policies/rules", json=rule, headers=org.headers),
                        400, "VALIDATION_ERROR")
    assert [d["field"] for d in body["details"]] == ["subject"]


@pytest.mark.parametrize("text", ["deny\x7f", f"deny {RLO}all", "deny\nall"])
async def test_policy_rule_description_follows_the_text_rule(client: Any, org: Org, text: str) -> None:
    rule = {"subject": "*", "capability": "crm:delete", "effect": "deny", "description": text}
    body = assert_error(await client.post(f"/api/v1/orgs/{org.org_id}/policies/rules", json=rule, headers=org.headers),
                        400, "VALIDATION_ERROR")
    assert [d["field"] for d in body["details"]] == ["description"]


async def test_role_is_checked_before_the_body_is_read(client: Any, org: Org) -> None:
    """Admission runs as a guard: a viewer's malformed body is 403, not 400 (as when the
    handler admitted the caller before reading its body); an id we never issue is 404."""
    mid = (await register(client, org))["manifest_id"]
    viewer = {"X-API-Key": await make_key(client, org, "viewer"), "content-type": "application/json"}
    r = await client.post(f"{base(org)}/{mid}/approve", content=b"[1,", headers=viewer)
    assert_error(r, 403, "PERMISSION_DENIED")
    r = await client.post(f"{base(org)}/not-an-id/approve", content=b"[1,", headers={**org.headers, "content-type": "application/json"})
    assert_error(r, 404, "NOT_FOUND")
    r = await client.post(f"{base(org)}/{mid}/approve", content=b"[1,", headers={"content-type": "application/json"})
    assert_error(r, 401, "AUTHENTICATION_REQUIRED")


async def test_approval_decisions_are_admitted_before_the_body(client: Any, org: Org) -> None:
    """The approvals controller took a typed body that Litestar parsed before ``admit`` ran:
    a viewer's malformed body was 400. Admitted by the guard, it is 403 like everywhere else."""
    viewer = {"X-API-Key": await make_key(client, org, "viewer"), "content-type": "application/json"}
    url = f"/api/v1/orgs/{org.org_id}/approvals/00000000-0000-0000-0000-000000000000/approve"
    assert_error(await client.post(url, content=b"[1,", headers=viewer), 403, "PERMISSION_DENIED")
    assert_error(await client.post(url, content=b"[1,", headers={"content-type": "application/json"}), 401,
                 "AUTHENTICATION_REQUIRED")
