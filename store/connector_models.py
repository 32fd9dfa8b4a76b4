"""Connectors: what performs an allowed action (issue 14). Tables of migration 0011.

Registered on ``store.models.Base`` (the same metadata as every other table), in a module of
their own. Secrets (header values, a stdio server's environment) are stored only sealed
(``secrets_sealed``: core/secretbox.py, the row's id and org in the associated data); their
*names* are kept in clear (``header_names``, ``env_names``) so that reading a connector never
needs the key and never can show a value.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from store.models import Base, new_id
from store.types import JSONType, UTCDateTime


class McpServer(Base):
    """An upstream MCP server of an organization. Its tool ``T`` is the capability
    ``<name>:<T mapped>`` (policies/tool_names.py)."""

    __tablename__ = "mcp_servers"
    __table_args__ = (
        UniqueConstraint("org_id", "name", name="uq_mcp_servers_org_name"),
        Index("ix_mcp_servers_org_created", "org_id", "created_at"),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(48))
    transport: Mapped[str] = mapped_column(String(16))  # streamable_http | stdio
    url: Mapped[str | None] = mapped_column(Text, nullable=True)  # streamable_http
    # streamable_http: may the url's host resolve to a private, loopback or link-local address
    # (core/netpolicy.py)? Off unless an admin says so.
    allow_private_addresses: Mapped[bool] = mapped_column(Boolean, default=False)
    command: Mapped[str | None] = mapped_column(Text, nullable=True)  # stdio
    args: Mapped[list[str] | None] = mapped_column(JSONType, nullable=True)  # stdio
    header_names: Mapped[list[str]] = mapped_column(JSONType)
    env_names: Mapped[list[str]] = mapped_column(JSONType)
    secrets_sealed: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The tool names declared at registration (None: discovered later, from the server).
    tools: Mapped[list[str] | None] = mapped_column(JSONType, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(254))


class HttpConnector(Base):
    """An HTTP request template: ``method`` to ``url_template`` (placeholders in the path and
    query only, filled from the action's params), within the outbound policy of its own
    allow-list (core/netpolicy.py), timeouts and response cap."""

    __tablename__ = "http_connectors"
    __table_args__ = (
        UniqueConstraint("org_id", "name", name="uq_http_connectors_org_name"),
        Index("ix_http_connectors_org_created", "org_id", "created_at"),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(8))
    url_template: Mapped[str] = mapped_column(Text)
    header_names: Mapped[list[str]] = mapped_column(JSONType)
    secrets_sealed: Mapped[str | None] = mapped_column(Text, nullable=True)
    allowed_hosts: Mapped[list[str]] = mapped_column(JSONType)
    allow_private_addresses: Mapped[bool] = mapped_column(Boolean, default=False)
    connect_timeout_ms: Mapped[int] = mapped_column(Integer)
    total_timeout_ms: Mapped[int] = mapped_column(Integer)
    max_response_bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(254))


class ConnectorBinding(Base):
    """Capability -> what performs it: an HTTP connector, or a tool of an MCP server. One
    binding per capability and organization. ``*_arg`` name the argument (a dotted path in
    the action's params) that carries the amount, currency and counterparty, so that amount
    rules, quotas and approvals see them."""

    __tablename__ = "connector_bindings"
    __table_args__ = (
        UniqueConstraint("org_id", "capability", name="uq_connector_bindings_org_capability"),
        Index("ix_connector_bindings_org_created", "org_id", "created_at"),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    capability: Mapped[str] = mapped_column(String(128))
    target: Mapped[str] = mapped_column(String(8))  # http | mcp
    http_connector_id: Mapped[str | None] = mapped_column(
        ForeignKey("http_connectors.id", ondelete="CASCADE"), nullable=True, index=True)
    mcp_server_id: Mapped[str | None] = mapped_column(
        ForeignKey("mcp_servers.id", ondelete="CASCADE"), nullable=True, index=True)
    tool: Mapped[str | None] = mapped_column(String(200), nullable=True)
    amount_arg: Mapped[str | None] = mapped_column(String(128), nullable=True)
    currency_arg: Mapped[str | None] = mapped_column(String(128), nullable=True)
    counterparty_arg: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(254))
