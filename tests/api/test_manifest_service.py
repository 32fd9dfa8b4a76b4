"""services/manifests.py without HTTP: a change is made with a runtime and a ChangeContext
only, and a change whose audit event cannot be handed over is not made (one unit of work)."""
from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from audit.changes import ChangeContext
from core.errors import Conflict, NotFound, ServiceUnavailable, ValidationFailed
from services import manifests as service
from store.models import Manifest
from tests.api.test_manifests_support import doc
from tests.conftest import Org


def _ctx(client: Any, org: Org, *, audited: bool = True) -> ChangeContext:
    return ChangeContext(sink=client.app.state.audit if audited else None, actor="user:test@example.com",
                         org_id=org.org_id)


async def _count(client: Any, org: Org) -> int:
    async with client.app.state.runtime.sessions() as session:
        return int((await session.execute(
            select(func.count()).select_from(Manifest).where(Manifest.org_id == org.org_id))).scalar_one())


async def test_register_and_transition_without_http(client: Any, org: Org) -> None:
    runtime = client.app.state.runtime
    m = await service.register(runtime, _ctx(client, org), "tester", org.org_id, doc("svc-bot"))
    assert m.status == "pending" and m.created_by == "tester"
    result = await service.transition(runtime, _ctx(client, org), "tester", org.org_id, m.id, "approve",
                                      notes="ok", approved_capabilities=["email:send", "email:send"])
    assert result.manifest.status == "active" and list(result.manifest.approved) == ["email:send"]
    with pytest.raises(Conflict):
        await service.transition(runtime, _ctx(client, org), "tester", org.org_id, m.id, "reactivate")
    with pytest.raises(NotFound):
        await service.transition(runtime, _ctx(client, org), "tester", org.org_id, "not-an-id", "revoke")
    with pytest.raises(ValidationFailed):
        await service.transition(runtime, _ctx(client, org), "tester", org.org_id, m.id, "suspend", reason="a\u202eb")
    assert (await service.get(runtime, org.org_id, m.id)).status == "active"


async def test_an_unauditable_change_is_not_made(client: Any, org: Org) -> None:
    runtime = client.app.state.runtime
    before = await _count(client, org)
    with pytest.raises(ServiceUnavailable):
        await service.register(runtime, _ctx(client, org, audited=False), "tester", org.org_id, doc("lost-bot"))
    assert await _count(client, org) == before
    m = await service.register(runtime, _ctx(client, org), "tester", org.org_id, doc("kept-bot"))
    with pytest.raises(ServiceUnavailable):
        await service.transition(runtime, _ctx(client, org, audited=False), "tester", org.org_id, m.id, "reject")
    assert (await service.get(runtime, org.org_id, m.id)).status == "pending"
