"""store.unit_of_work: one transaction with the org's version bumped first, the audit hook
inside it, the typed announcement only after a commit (both backends)."""
from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, update

from store.bus_messages import Change, PolicyChanged
from store.changes import org_versions
from store.models import Organization
from store.unit_of_work import unit_of_work


class Boom(Exception):
    pass


async def _setup(client: Any) -> tuple[Any, list[Change], list[tuple[str, Any, dict[str, Any]]]]:
    runtime = client.app.state.runtime
    heard: list[Change] = []
    audited: list[tuple[str, Any, dict[str, Any]]] = []

    async def listener(message: Change) -> None:
        heard.append(message)

    runtime.bus.subscribe(listener)
    return runtime, heard, audited


async def _version(runtime: Any, org_id: str) -> int:
    async with runtime.sessions() as session:
        return (await org_versions(session)).get(org_id, 0)


async def _name(runtime: Any, org_id: str) -> str:
    async with runtime.sessions() as session:
        return str((await session.execute(select(Organization.name).where(Organization.id == org_id))).scalar_one())


def _hook(audited: list[tuple[str, Any, dict[str, Any]]], fail: bool = False) -> Any:
    async def hook(kind: str, details: Any, session: Any, **fields: Any) -> None:
        assert session.in_transaction()  # inside the change's transaction
        if fail:
            raise Boom("audit trail unavailable")
        audited.append((kind, details, fields))

    return hook


async def test_commit_bumps_audits_then_announces(client: Any, org: Any) -> None:
    runtime, heard, audited = await _setup(client)
    before = await _version(runtime, org.org_id)
    async with unit_of_work(runtime, org.org_id, audit=_hook(audited)) as uow:
        assert uow.version == before + 1
        await uow.session.execute(update(Organization).where(Organization.id == org.org_id).values(name="Renamed"))
        await uow.record("org.renamed", {"name": "Renamed"}, uapk_id="x")
        uow.announce(PolicyChanged(org_id=org.org_id, version=uow.version))
        assert heard == []  # nothing is announced before the commit
    assert audited == [("org.renamed", {"name": "Renamed"}, {"uapk_id": "x"})]
    assert heard == [PolicyChanged(org_id=org.org_id, version=before + 1)]
    assert await _version(runtime, org.org_id) == before + 1
    assert await _name(runtime, org.org_id) == "Renamed"


@pytest.mark.parametrize("where", ["body", "audit", "unaudited"])
async def test_a_failure_changes_nothing_and_announces_nothing(client: Any, org: Any, where: str) -> None:
    runtime, heard, audited = await _setup(client)
    before, name = await _version(runtime, org.org_id), await _name(runtime, org.org_id)
    expected = {"body": Boom, "audit": Boom, "unaudited": RuntimeError}[where]
    with pytest.raises(expected):
        async with unit_of_work(runtime, org.org_id, audit=_hook(audited, fail=where == "audit")) as uow:
            await uow.session.execute(update(Organization).where(Organization.id == org.org_id).values(name="Gone"))
            uow.announce(PolicyChanged(org_id=org.org_id, version=uow.version))
            if where == "body":
                raise Boom("the change failed")
            if where == "audit":
                await uow.record("org.renamed", {"name": "Gone"})
            # "unaudited": a hook was given, no event recorded: refused at the commit
    assert heard == [] and audited == []
    assert await _version(runtime, org.org_id) == before
    assert await _name(runtime, org.org_id) == name


async def test_without_a_version_bump(client: Any, org: Any) -> None:
    runtime, heard, _ = await _setup(client)
    before = await _version(runtime, org.org_id)
    async with unit_of_work(runtime, org.org_id, bump_version=False) as uow:
        with pytest.raises(RuntimeError):
            uow.version  # noqa: B018 - the property raises
        uow.announce(PolicyChanged(org_id=org.org_id, version=before))
    assert await _version(runtime, org.org_id) == before
    assert heard == [PolicyChanged(org_id=org.org_id, version=before)]
