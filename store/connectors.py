"""Queries for connectors (store/connector_models.py): MCP servers, HTTP connectors, bindings.

Every lookup is scoped by ``org_id``: another organization's id finds nothing (404 above).
Inserts flush at once, so a unique constraint (a name, a bound capability) raced by a
concurrent change surfaces here as :class:`Taken`, inside the caller's transaction.
"""
from __future__ import annotations

from typing import Any, TypeVar, cast

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from policies.tool_names import mcp_capability
from store.connector_models import ConnectorBinding, HttpConnector, McpServer

Row = TypeVar("Row", McpServer, HttpConnector, ConnectorBinding)


class Taken(Exception):
    """A unique name or capability was taken meanwhile."""


async def add(session: AsyncSession, row: Row) -> Row:
    # No savepoint: on SQLite (pysqlite) a SAVEPOINT opened before the first write of a
    # transaction commits on release. A Taken leaves the session failed; the caller raises and
    # its unit of work rolls back.
    session.add(row)
    try:
        await session.flush()
    except IntegrityError:
        raise Taken() from None
    return row


async def page(session: AsyncSession, model: type[Row], org_id: str, limit: int, offset: int) -> tuple[list[Row], int]:
    """One page of ``model``'s rows of ``org_id``, oldest first, and their total."""
    where: Any = model.org_id == org_id
    total = (await session.execute(select(func.count()).select_from(model).where(where))).scalar_one()
    rows = (await session.execute(
        select(model).where(where).order_by(model.created_at, model.id).limit(limit).offset(offset)
    )).scalars().all()
    return list(rows), int(total)


async def get(session: AsyncSession, model: type[Row], org_id: str, row_id: str) -> Row | None:
    where: Any = (model.org_id == org_id) & (model.id == row_id)
    return (await session.execute(select(model).where(where))).scalar_one_or_none()


async def by_name(session: AsyncSession, model: type[McpServer] | type[HttpConnector], org_id: str,
                  name: str) -> McpServer | HttpConnector | None:
    where: Any = (model.org_id == org_id) & (model.name == name)
    row = (await session.execute(select(model).where(where))).scalar_one_or_none()
    return cast("McpServer | HttpConnector | None", row)


async def bindings_to(session: AsyncSession, org_id: str, *, server_id: str | None = None,
                      connector_id: str | None = None) -> list[ConnectorBinding]:
    query = select(ConnectorBinding).where(ConnectorBinding.org_id == org_id)
    if server_id is not None:
        query = query.where(ConnectorBinding.mcp_server_id == server_id)
    if connector_id is not None:
        query = query.where(ConnectorBinding.http_connector_id == connector_id)
    return list((await session.execute(query.order_by(ConnectorBinding.capability))).scalars().all())


async def claimed_capabilities(session: AsyncSession, org_id: str) -> dict[str, tuple[str, str | None, str | None]]:
    """Every capability something already performs in ``org_id``: ``{capability: (what,
    mcp server id, tool)}`` — explicit bindings, and the default ``S:T`` of every tool a
    registered MCP server declared. ``what`` describes the claimant for a 409's details."""
    claimed: dict[str, tuple[str, str | None, str | None]] = {}
    servers = (await session.execute(select(McpServer).where(McpServer.org_id == org_id))).scalars().all()
    for server in servers:
        for tool in server.tools or []:
            claimed[mcp_capability(server.name, tool)] = (f"tool {tool!r} of MCP server {server.name!r}", server.id, tool)
    bindings = (await session.execute(select(ConnectorBinding).where(ConnectorBinding.org_id == org_id))).scalars().all()
    for b in bindings:
        claimed[b.capability] = (f"binding {b.id}", b.mcp_server_id, b.tool)
    return claimed


async def delete(session: AsyncSession, row: McpServer | HttpConnector | ConnectorBinding) -> None:
    await session.delete(row)
    await session.flush()
