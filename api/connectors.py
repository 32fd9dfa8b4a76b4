"""Connectors API (issue 14): upstream MCP servers, HTTP connectors and capability bindings of
an organization. Admins and owners only, reads included (a connector's configuration says
where Bastion sends an agent's actions). Thin: each route is admitted by a guard before its
body is read, takes a typed body and calls services/connectors.py.

Responses name headers and environment variables, never their values: those are stored
encrypted and no route returns them.
"""
from __future__ import annotations

from typing import Any, Literal

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT

from api.admission import CALLER, admitted, path_id
from audit.changes import change_context
from core.clock import isoformat
from httpkit.auth import Caller
from httpkit.pagination import Page, pagination
from policies.tool_names import mcp_capability
from services import connectors as service
from store.connector_models import ConnectorBinding, HttpConnector, McpServer
from store.runtime import Runtime

# Managing connectors is managing the organization: the roles that may update it (admin, owner).
ADMIN = admitted("orgs", "update")


class Strict(msgspec.Struct, forbid_unknown_fields=True):
    pass


# --- wire types ---------------------------------------------------------------------------------
class McpServerCreate(Strict):
    """An upstream MCP server. ``streamable_http`` takes ``url`` (and ``headers``); ``stdio``
    takes ``command`` and ``args`` (and ``env``). Header and variable values are secrets:
    stored encrypted, never shown again. ``tools``: the tool names the server offers, if
    known now (each becomes the capability ``<name>:<tool mapped>``)."""

    name: str
    transport: Literal["streamable_http", "stdio"]
    url: str | None = None
    command: str | None = None
    args: list[str] | None = None
    headers: dict[str, str] | None = None
    env: dict[str, str] | None = None
    tools: list[str] | None = None
    # streamable_http: may the url's host resolve to a private, loopback or link-local address?
    allow_private_addresses: bool = False


class McpServerOut(msgspec.Struct):
    id: str
    org_id: str
    name: str
    transport: str
    url: str | None
    allow_private_addresses: bool
    command: str | None
    args: list[str] | None
    header_names: list[str]
    env_names: list[str]
    tools: list[str] | None
    # {tool name: capability} for the declared tools.
    capabilities: dict[str, str] | None
    created_at: str
    created_by: str


class McpServerList(msgspec.Struct):
    items: list[McpServerOut]
    total: int


class HttpConnectorCreate(Strict):
    """An HTTP connector: ``method`` to ``url_template`` (``{param}`` placeholders in the path
    and query only). ``allowed_hosts`` defaults to the template's host. Private, loopback and
    link-local addresses are refused unless ``allow_private_addresses``."""

    name: str
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
    url_template: str
    headers: dict[str, str] | None = None
    allowed_hosts: list[str] | None = None
    allow_private_addresses: bool = False
    connect_timeout_ms: int | None = None
    total_timeout_ms: int | None = None
    max_response_bytes: int | None = None


class HttpConnectorOut(msgspec.Struct):
    id: str
    org_id: str
    name: str
    method: str
    url_template: str
    header_names: list[str]
    allowed_hosts: list[str]
    allow_private_addresses: bool
    connect_timeout_ms: int
    total_timeout_ms: int
    max_response_bytes: int
    created_at: str
    created_by: str


class HttpConnectorList(msgspec.Struct):
    items: list[HttpConnectorOut]
    total: int


class BindingCreate(Strict):
    """Binds a capability to an HTTP connector, or to a tool of an MCP server (``capability``
    defaults to the tool's ``<server>:<tool mapped>``). ``*_arg`` name the argument (a name or
    dotted path in the action's params) that carries the amount, currency and counterparty."""

    capability: str | None = None
    http_connector_id: str | None = None
    mcp_server_id: str | None = None
    tool: str | None = None
    amount_arg: str | None = None
    currency_arg: str | None = None
    counterparty_arg: str | None = None


class BindingOut(msgspec.Struct):
    id: str
    org_id: str
    capability: str
    target: str
    http_connector_id: str | None
    mcp_server_id: str | None
    tool: str | None
    amount_arg: str | None
    currency_arg: str | None
    counterparty_arg: str | None
    created_at: str
    created_by: str


class BindingList(msgspec.Struct):
    items: list[BindingOut]
    total: int


def _server_out(s: McpServer) -> McpServerOut:
    return McpServerOut(
        id=s.id, org_id=s.org_id, name=s.name, transport=s.transport, url=s.url,
        allow_private_addresses=s.allow_private_addresses, command=s.command, args=s.args,
        header_names=list(s.header_names), env_names=list(s.env_names), tools=s.tools,
        capabilities={t: mcp_capability(s.name, t) for t in s.tools} if s.tools is not None else None,
        created_at=isoformat(s.created_at) or "", created_by=s.created_by,
    )


def _connector_out(c: HttpConnector) -> HttpConnectorOut:
    return HttpConnectorOut(
        id=c.id, org_id=c.org_id, name=c.name, method=c.method, url_template=c.url_template,
        header_names=list(c.header_names), allowed_hosts=list(c.allowed_hosts),
        allow_private_addresses=c.allow_private_addresses, connect_timeout_ms=c.connect_timeout_ms,
        total_timeout_ms=c.total_timeout_ms, max_response_bytes=c.max_response_bytes,
        created_at=isoformat(c.created_at) or "", created_by=c.created_by,
    )


def _binding_out(b: ConnectorBinding) -> BindingOut:
    return BindingOut(
        id=b.id, org_id=b.org_id, capability=b.capability, target=b.target, http_connector_id=b.http_connector_id,
        mcp_server_id=b.mcp_server_id, tool=b.tool, amount_arg=b.amount_arg, currency_arg=b.currency_arg,
        counterparty_arg=b.counterparty_arg, created_at=isoformat(b.created_at) or "", created_by=b.created_by,
    )


def _runtime(request: Request[Any, Any, Any]) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


# --- controllers ----------------------------------------------------------------------------------
class McpServerController(Controller):
    path = "/api/v1/orgs/{org_id:str}/mcp-servers"
    tags = ["connectors"]
    dependencies = CALLER
    guards = [ADMIN]

    @post("/", status_code=HTTP_201_CREATED, summary="Register an upstream MCP server (secrets never shown again)")
    async def register(self, request: Request[Any, Any, Any], org_id: str, caller: Caller,
                       data: McpServerCreate) -> McpServerOut:
        row = await service.register_server(
            _runtime(request), change_context(request, caller), caller.actor, org_id, name=data.name,
            transport=data.transport, url=data.url, command=data.command, args=data.args, headers=data.headers,
            env=data.env, tools=data.tools, allow_private_addresses=data.allow_private_addresses,
        )
        return _server_out(row)

    @get("/", summary="The organization's upstream MCP servers (header and variable names only)",
         dependencies=pagination())
    async def list_servers(self, request: Request[Any, Any, Any], org_id: str, page: Page) -> McpServerList:
        rows, total = await service.list_rows(_runtime(request), McpServer, org_id, page.limit, page.offset)
        return McpServerList(items=[_server_out(r) for r in rows], total=total)

    @get("/{server_id:str}", summary="One upstream MCP server", guards=[path_id("server_id", service.ROW_ID)])
    async def get_server(self, request: Request[Any, Any, Any], org_id: str, server_id: str) -> McpServerOut:
        return _server_out(await service.get_row(_runtime(request), McpServer, org_id, server_id))

    @delete("/{server_id:str}", status_code=HTTP_204_NO_CONTENT, summary="Delete an upstream MCP server (409 while bound)",
            guards=[path_id("server_id", service.ROW_ID)])
    async def delete_server(self, request: Request[Any, Any, Any], org_id: str, server_id: str, caller: Caller) -> None:
        await service.delete_row(_runtime(request), change_context(request, caller), org_id, McpServer, server_id)


class HttpConnectorController(Controller):
    path = "/api/v1/orgs/{org_id:str}/http-connectors"
    tags = ["connectors"]
    dependencies = CALLER
    guards = [ADMIN]

    @post("/", status_code=HTTP_201_CREATED, summary="Register an HTTP connector (secrets never shown again)")
    async def register(self, request: Request[Any, Any, Any], org_id: str, caller: Caller,
                       data: HttpConnectorCreate) -> HttpConnectorOut:
        row = await service.register_connector(
            _runtime(request), change_context(request, caller), caller.actor, org_id, name=data.name,
            method=data.method, url_template=data.url_template, headers=data.headers, allowed_hosts=data.allowed_hosts,
            allow_private_addresses=data.allow_private_addresses, connect_timeout_ms=data.connect_timeout_ms,
            total_timeout_ms=data.total_timeout_ms, max_response_bytes=data.max_response_bytes,
        )
        return _connector_out(row)

    @get("/", summary="The organization's HTTP connectors (header names only)", dependencies=pagination())
    async def list_connectors(self, request: Request[Any, Any, Any], org_id: str, page: Page) -> HttpConnectorList:
        rows, total = await service.list_rows(_runtime(request), HttpConnector, org_id, page.limit, page.offset)
        return HttpConnectorList(items=[_connector_out(r) for r in rows], total=total)

    @get("/{connector_id:str}", summary="One HTTP connector", guards=[path_id("connector_id", service.ROW_ID)])
    async def get_connector(self, request: Request[Any, Any, Any], org_id: str, connector_id: str) -> HttpConnectorOut:
        return _connector_out(await service.get_row(_runtime(request), HttpConnector, org_id, connector_id))

    @delete("/{connector_id:str}", status_code=HTTP_204_NO_CONTENT, summary="Delete an HTTP connector (409 while bound)",
            guards=[path_id("connector_id", service.ROW_ID)])
    async def delete_connector(self, request: Request[Any, Any, Any], org_id: str, connector_id: str,
                               caller: Caller) -> None:
        await service.delete_row(_runtime(request), change_context(request, caller), org_id, HttpConnector, connector_id)


class BindingController(Controller):
    path = "/api/v1/orgs/{org_id:str}/bindings"
    tags = ["connectors"]
    dependencies = CALLER
    guards = [ADMIN]

    @post("/", status_code=HTTP_201_CREATED, summary="Bind a capability to an HTTP connector or an MCP server's tool")
    async def create(self, request: Request[Any, Any, Any], org_id: str, caller: Caller, data: BindingCreate) -> BindingOut:
        row = await service.create_binding(
            _runtime(request), change_context(request, caller), caller.actor, org_id, capability=data.capability,
            http_connector_id=data.http_connector_id, mcp_server_id=data.mcp_server_id, tool=data.tool,
            amount_arg=data.amount_arg, currency_arg=data.currency_arg, counterparty_arg=data.counterparty_arg,
        )
        return _binding_out(row)

    @get("/", summary="The organization's capability bindings", dependencies=pagination())
    async def list_bindings(self, request: Request[Any, Any, Any], org_id: str, page: Page) -> BindingList:
        rows, total = await service.list_rows(_runtime(request), ConnectorBinding, org_id, page.limit, page.offset)
        return BindingList(items=[_binding_out(r) for r in rows], total=total)

    @get("/{binding_id:str}", summary="One capability binding", guards=[path_id("binding_id", service.ROW_ID)])
    async def get_binding(self, request: Request[Any, Any, Any], org_id: str, binding_id: str) -> BindingOut:
        return _binding_out(await service.get_row(_runtime(request), ConnectorBinding, org_id, binding_id))

    @delete("/{binding_id:str}", status_code=HTTP_204_NO_CONTENT, summary="Delete a capability binding",
            guards=[path_id("binding_id", service.ROW_ID)])
    async def delete_binding(self, request: Request[Any, Any, Any], org_id: str, binding_id: str, caller: Caller) -> None:
        await service.delete_row(_runtime(request), change_context(request, caller), org_id, ConnectorBinding, binding_id)


ROUTES = [McpServerController, HttpConnectorController, BindingController]
