"""A rule's description survives later policy changes: ``GET .../rules``, the next versions,
rollback, the shadow set and its promotion all keep it."""
from __future__ import annotations

from typing import Any

from tests.conftest import Org


def base(org: Org) -> str:
    return f"/api/v1/orgs/{org.org_id}/policies"


NO_DELETE = {"id": "no-delete", "subject": "*", "capability": "crm:delete", "effect": "deny",
             "description": "Support never deletes CRM records (ticket SEC-12)."}
BIG = {"id": "big-payments", "subject": "*", "capability": "payments:*", "effect": "escalate",
       "conditions": {"amount_above": 1000}, "description": "d" * 500}
PLAIN = {"id": "no-export", "subject": "*", "capability": "crm:export", "effect": "deny"}


async def _post(client: Any, org: Org, path: str, body: Any = None) -> dict[str, Any]:
    r = await client.post(f"{base(org)}{path}", json=body, headers=org.headers) if body is not None else \
        await client.post(f"{base(org)}{path}", headers=org.headers)
    assert r.status_code in (200, 201), r.text
    return r.json()  # type: ignore[no-any-return]


async def _get(client: Any, org: Org, path: str) -> dict[str, Any]:
    r = await client.get(f"{base(org)}{path}", headers=org.headers)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def test_descriptions_survive_later_changes(client: Any, org: Org) -> None:
    assert (await _post(client, org, "/rules", NO_DELETE))["rule"] == NO_DELETE
    await _post(client, org, "/rules", BIG)  # version 2: reloads version 1's rules
    await _post(client, org, "/rules", PLAIN)  # version 3
    assert await _get(client, org, "/rules") == {"version": 3, "rules": [NO_DELETE, BIG, PLAIN]}
    for v, rules in ((2, [NO_DELETE, BIG]), (3, [NO_DELETE, BIG, PLAIN])):
        assert (await _get(client, org, f"/versions/{v}"))["rules"] == rules
    r = await client.delete(f"{base(org)}/rules/no-export", headers=org.headers)
    assert r.status_code == 200 and r.json() == {"version": 4}
    assert (await _get(client, org, "/versions/4"))["rules"] == [NO_DELETE, BIG]
    assert (await _get(client, org, "/rules"))["rules"] == [NO_DELETE, BIG]
    # Rollback to version 1, then another change: still described.
    assert (await _post(client, org, "/versions/1/rollback"))["rules"] == [NO_DELETE]
    await _post(client, org, "/rules", PLAIN)
    assert await _get(client, org, "/rules") == {"version": 6, "rules": [NO_DELETE, PLAIN]}


async def test_shadow_descriptions_survive_promotion_and_the_next_change(client: Any, org: Org) -> None:
    shadow = await _post(client, org, "/shadow", {"rules": [NO_DELETE, PLAIN]})
    assert shadow["rules"] == [NO_DELETE, PLAIN]
    assert (await _get(client, org, "/shadow"))["rules"] == [NO_DELETE, PLAIN]
    assert (await _post(client, org, "/shadow/promote"))["version"] == 1
    await _post(client, org, "/rules", BIG)
    assert await _get(client, org, "/rules") == {"version": 2, "rules": [NO_DELETE, PLAIN, BIG]}
