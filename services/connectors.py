"""Connectors (issue 14): register, read and delete upstream MCP servers, HTTP connectors and
capability bindings.

* **Validation** collects every bad field at once (400 with field details): names in the
  capability grammar, URLs http/https only without credentials, a stdio command that is not
  empty, header and environment names that are names, allowed hosts well-formed
  (core/netpolicy.py), URL templates with placeholders only in the path and query
  (core/url_template.py). A message never quotes a secret value.
* **Secrets** (header values, a stdio server's environment) are sealed before they reach the
  session (core/secretbox.py with the key set of store/secret_keys.py); the associated data
  names the organization, the kind of row and its id, so a sealed value moved to another row
  does not open. Rows keep the *names* in clear; nothing here returns a value except
  :func:`open_secrets`, which the code that performs a call uses (never an API response).
* **Capabilities**: a tool ``T`` of server ``S`` is ``S:T`` (policies/tool_names.py). A
  capability is performed by one thing per organization: two declared tools that map to the
  same capability, a tool whose ``S:T`` is already bound elsewhere, or a binding of a taken
  capability answer 409.
* **Changes** are one unit of work each (store/unit_of_work.py) with their audit event
  inside the transaction; the audited details name headers and variables, never values.
  They take the organization's row lock first, so concurrent changes of one organization
  check their conflicts one after the other. Nothing a gateway compiles changes (no
  version bump, no reload).
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select

from audit.changes import ChangeContext
from core.clock import utcnow
from core.errors import Conflict, FieldIssue, NotFound, ValidationFailed
from core.netpolicy import allowed_host_issue, host_on_allow_list, normalize_host
from core.secretbox import SecretBox, SecretUnreadable
from core.text import text_issue
from core.url_template import PLACEHOLDER, template_issue
from policies.capabilities import is_concrete
from policies.tool_names import MAX_SERVER_NAME, collisions, is_server_name, mcp_capability
from store import connectors as repo
from store import secret_keys
from store.connector_models import ConnectorBinding, HttpConnector, McpServer
from store.models import Organization, new_id
from store.runtime import Runtime
from store.unit_of_work import UnitOfWork, unit_of_work

TRANSPORTS = ("streamable_http", "stdio")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
CONNECTOR_NAME = re.compile(r"\A[a-z0-9_-]{1,64}\Z", re.ASCII)
# RFC 9110 field-name (a token).
HEADER_NAME = re.compile(r"\A[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}\Z", re.ASCII)
ENV_NAME = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]{0,127}\Z", re.ASCII)
ARG_PATH = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]{0,63}(?:\.[A-Za-z_][A-Za-z0-9_]{0,63})*\Z", re.ASCII)
ROW_ID = re.compile(r"\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z", re.ASCII)
# Set by the HTTP client from the request itself, or hop-by-hop: a connector may not forge them.
RESERVED_HEADERS = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te", "trailer",
    "proxy-authorization", "proxy-connection",
})
MAX_HEADERS = 32
MAX_SECRET_VALUE = 8192
MAX_ARGS = 64
MAX_TOOLS = 1000
MAX_TOOL_NAME = 200
MAX_ALLOWED_HOSTS = 50

DEFAULT_CONNECT_TIMEOUT_MS = 3_000
DEFAULT_TOTAL_TIMEOUT_MS = 10_000
DEFAULT_MAX_RESPONSE_BYTES = 1024 * 1024  # 1 MiB
MAX_CONNECT_TIMEOUT_MS = 30_000
MAX_TOTAL_TIMEOUT_MS = 120_000
MAX_RESPONSE_BYTES = 16 * 1024 * 1024


# --- validation ------------------------------------------------------------------------------
class _Issues:
    def __init__(self) -> None:
        self.items: list[FieldIssue] = []

    def add(self, field: str, issue: str) -> None:
        self.items.append(FieldIssue(field, issue))

    def raise_if_any(self) -> None:
        if self.items:
            raise ValidationFailed("Request body failed validation.", self.items)


def _url_issue(url: str) -> str | None:
    if PLACEHOLDER.search(url):
        return "Must be a URL, not a template (no {placeholders})."
    return template_issue(url)


def _secret_map(issues: _Issues, field: str, values: Mapping[str, str] | None, name_rule: re.Pattern[str],
                name_issue: str, *, reserved: frozenset[str] = frozenset(),
                ascii_only: bool = False) -> dict[str, str]:
    """Names checked one by one; values only for their size and control characters (the
    issue never quotes a value: it is a secret)."""
    if not values:
        return {}
    if len(values) > MAX_HEADERS:
        issues.add(field, f"At most {MAX_HEADERS} entries.")
        return {}
    seen: set[str] = set()
    for name, value in values.items():
        where = f"{field}.{name}" if name_rule.match(name) else field
        if not name_rule.match(name):
            issues.add(field, name_issue)
            continue
        if name.lower() in reserved:
            issues.add(where, "This header is set by Bastion's HTTP client and cannot be configured.")
        if name.lower() in seen:
            issues.add(where, "Listed twice (names are case-insensitive).")
        seen.add(name.lower())
        if len(value) > MAX_SECRET_VALUE:
            issues.add(where, f"The value must be at most {MAX_SECRET_VALUE} characters.")
        elif any(ord(c) < 0x20 and c != "\t" or ord(c) == 0x7F for c in value):
            issues.add(where, "The value must not contain control characters (CR, LF, NUL...).")
        elif ascii_only and not value.isascii():
            # What goes on the wire as an HTTP header: anything else fails at call time.
            issues.add(where, "The value must be ASCII.")
    return dict(values)


def _check_tools(issues: _Issues, tools: list[str] | None) -> list[str] | None:
    if tools is None:
        return None
    if len(tools) > MAX_TOOLS:
        issues.add("tools", f"At most {MAX_TOOLS} tools.")
        return None
    for i, tool in enumerate(tools):
        if not tool or len(tool) > MAX_TOOL_NAME:
            issues.add(f"tools.{i}", f"Must be 1-{MAX_TOOL_NAME} characters.")
        elif (problem := text_issue(tool)) is not None:
            issues.add(f"tools.{i}", problem)
    return list(dict.fromkeys(tools))


def _check_server_name(issues: _Issues, name: str) -> None:
    if not is_server_name(name):
        issues.add("name", f"Must be 1-{MAX_SERVER_NAME} characters of a-z, 0-9, _ and - "
                           "(it is the first segment of the capabilities of its tools).")


# --- secrets ---------------------------------------------------------------------------------
def _context(kind: str, org_id: str, row_id: str) -> bytes:
    return f"bastion-connector-secrets:{kind}:{org_id}:{row_id}".encode()


def _seal(box: SecretBox, kind: str, org_id: str, row_id: str, secrets: dict[str, dict[str, str]]) -> str | None:
    if not any(secrets.values()):
        return None
    return box.seal(json.dumps(secrets, sort_keys=True).encode(), _context(kind, org_id, row_id))


def box(runtime: Runtime) -> SecretBox:
    return secret_keys.box_for(runtime.settings)


def open_secrets(runtime: Runtime, row: McpServer | HttpConnector) -> dict[str, dict[str, str]]:
    """``{"headers": {...}, "env": {...}}`` of ``row``, for the code that performs a call.
    Raises ``SecretUnreadable`` (fail closed) when the key set cannot open them."""
    if row.secrets_sealed is None:
        return {"headers": {}, "env": {}}
    kind = "mcp_server" if isinstance(row, McpServer) else "http_connector"
    plain = box(runtime).open(row.secrets_sealed, _context(kind, row.org_id, row.id))
    data = json.loads(plain)
    return {"headers": dict(data.get("headers", {})), "env": dict(data.get("env", {}))}


# --- the unit of work --------------------------------------------------------------------------
async def _lock_org(uow: UnitOfWork) -> None:
    """Serialize this organization's connector changes (PostgreSQL: its row lock; SQLite has
    one writer at a time anyway), so conflict checks see every committed change."""
    await uow.session.execute(select(Organization.id).where(Organization.id == uow.org_id).with_for_update())


def _known(row_id: str) -> str:
    """An id we could not have issued is the same 404 as a missing one (nothing odd reaches SQL)."""
    if not ROW_ID.match(row_id):
        raise NotFound()
    return row_id


def _claim_conflicts(claimed: Mapping[str, tuple[str, str | None, str | None]],
                     wanted: Mapping[str, str], field: str) -> list[FieldIssue]:
    """``wanted``: {capability: what wants it}. Issues for each capability already claimed."""
    return [FieldIssue(field, f"{what} maps to capability {cap}, which is already performed by {claimed[cap][0]}.")
            for cap, what in wanted.items() if cap in claimed]


# --- MCP servers -------------------------------------------------------------------------------
async def register_server(
    runtime: Runtime, ctx: ChangeContext, actor: str, org_id: str, *, name: str, transport: str,
    url: str | None = None, command: str | None = None, args: list[str] | None = None,
    headers: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None, tools: list[str] | None = None,
    allow_private_addresses: bool = False,
) -> McpServer:
    issues = _Issues()
    _check_server_name(issues, name)
    if transport not in TRANSPORTS:
        issues.add("transport", "Must be streamable_http or stdio.")
    if transport == "streamable_http":
        if not url:
            issues.add("url", "Required for the streamable_http transport.")
        elif (problem := _url_issue(url)) is not None:
            issues.add("url", problem)
        for field, value in (("command", command), ("args", args), ("env", env)):
            if value:
                issues.add(field, "Only for the stdio transport.")
    elif transport == "stdio":
        if command is None or not command.strip():
            issues.add("command", "Required for the stdio transport: must not be empty.")
        elif len(command) > 1024:
            issues.add("command", "Must be at most 1024 characters.")
        elif (problem := text_issue(command)) is not None:
            issues.add("command", problem)
        if args is not None and len(args) > MAX_ARGS:
            issues.add("args", f"At most {MAX_ARGS} arguments.")
        for i, arg in enumerate((args or [])[:MAX_ARGS]):
            if len(arg) > 4096:
                issues.add(f"args.{i}", "Must be at most 4096 characters.")
            elif (problem := text_issue(arg)) is not None:
                issues.add(f"args.{i}", problem)
        for field, value in (("url", url), ("headers", headers), ("allow_private_addresses", allow_private_addresses)):
            if value:
                issues.add(field, "Only for the streamable_http transport.")
    header_map = _secret_map(issues, "headers", headers, HEADER_NAME, "Header names are tokens (RFC 9110): "
                             "letters, digits and !#$%&'*+.^_`|~-.", reserved=RESERVED_HEADERS, ascii_only=True)
    env_map = _secret_map(issues, "env", env, ENV_NAME, "Variable names are letters, digits and _, not starting with a digit.")
    declared = _check_tools(issues, tools)
    issues.raise_if_any()
    if declared is not None:
        found = collisions(name, declared)
        if found:
            raise Conflict("Two tool names map to the same capability.", [
                FieldIssue("tools", f"{' and '.join(map(repr, c.names))} all map to capability {c.capability}.")
                for c in found
            ])

    server_id = new_id()
    sealed = _seal(box(runtime), "mcp_server", org_id, server_id, {"headers": header_map, "env": env_map})
    async with unit_of_work(runtime, org_id, audit=ctx.hook, bump_version=False) as uow:
        await _lock_org(uow)
        if await repo.by_name(uow.session, McpServer, org_id, name) is not None:
            raise Conflict(f"An MCP server named {name!r} exists already.", [FieldIssue("name", "Taken.")])
        if declared:
            claimed = await repo.claimed_capabilities(uow.session, org_id)
            wanted = {mcp_capability(name, t): f"tool {t!r}" for t in declared}
            if conflicts := _claim_conflicts(claimed, wanted, "tools"):
                raise Conflict("A tool's capability is already performed by something else.", conflicts)
        try:
            row = await repo.add(uow.session, McpServer(
                id=server_id, org_id=org_id, name=name, transport=transport,
                url=url if transport == "streamable_http" else None,
                allow_private_addresses=bool(allow_private_addresses) and transport == "streamable_http",
                command=command if transport == "stdio" else None,
                args=list(args or []) if transport == "stdio" else None,
                header_names=sorted(header_map), env_names=sorted(env_map), secrets_sealed=sealed,
                tools=declared, created_at=utcnow(), created_by=actor,
            ))
        except repo.Taken:
            raise Conflict(f"An MCP server named {name!r} exists already.", [FieldIssue("name", "Taken.")]) from None
        await uow.record("mcp_server.registered", {
            "server_id": row.id, "name": row.name, "transport": row.transport, "url": row.url,
            "allow_private_addresses": row.allow_private_addresses,
            "command": row.command, "args": row.args, "header_names": row.header_names,
            "env_names": row.env_names, "tools": row.tools,
        })
    return row


# --- HTTP connectors ---------------------------------------------------------------------------
def _bounded(issues: _Issues, field: str, value: int | None, default: int, lo: int, hi: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not lo <= value <= hi:
        issues.add(field, f"Must be between {lo} and {hi}.")
        return default
    return value


async def register_connector(
    runtime: Runtime, ctx: ChangeContext, actor: str, org_id: str, *, name: str, method: str, url_template: str,
    headers: Mapping[str, str] | None = None, allowed_hosts: list[str] | None = None,
    allow_private_addresses: bool = False, connect_timeout_ms: int | None = None,
    total_timeout_ms: int | None = None, max_response_bytes: int | None = None,
) -> HttpConnector:
    issues = _Issues()
    if not CONNECTOR_NAME.match(name):
        issues.add("name", "Must be 1-64 characters of a-z, 0-9, _ and -.")
    if method not in METHODS:
        issues.add("method", f"Must be one of {', '.join(METHODS)}.")
    template_host: str | None = None
    if (problem := template_issue(url_template)) is not None:
        issues.add("url_template", problem)
    else:
        template_host = normalize_host(urlsplit(PLACEHOLDER.sub("x", url_template)).hostname or "")
    hosts: list[str] = []
    if allowed_hosts is not None and len(allowed_hosts) > MAX_ALLOWED_HOSTS:
        issues.add("allowed_hosts", f"At most {MAX_ALLOWED_HOSTS} entries.")
    else:
        for i, entry in enumerate(allowed_hosts or []):
            if (problem := allowed_host_issue(entry)) is not None:
                issues.add(f"allowed_hosts.{i}", problem)
            else:
                hosts.append(normalize_host(entry))
        if not allowed_hosts and template_host:
            hosts = [template_host]  # the default: exactly the template's host
        elif template_host and hosts and not host_on_allow_list(template_host, hosts):
            issues.add("allowed_hosts", f"Must cover the URL template's host {template_host!r}.")
    connect = _bounded(issues, "connect_timeout_ms", connect_timeout_ms, DEFAULT_CONNECT_TIMEOUT_MS, 1, MAX_CONNECT_TIMEOUT_MS)
    total = _bounded(issues, "total_timeout_ms", total_timeout_ms, DEFAULT_TOTAL_TIMEOUT_MS, 1, MAX_TOTAL_TIMEOUT_MS)
    if connect > total:
        issues.add("connect_timeout_ms", "Must not exceed total_timeout_ms.")
    cap = _bounded(issues, "max_response_bytes", max_response_bytes, DEFAULT_MAX_RESPONSE_BYTES, 1, MAX_RESPONSE_BYTES)
    header_map = _secret_map(issues, "headers", headers, HEADER_NAME, "Header names are tokens (RFC 9110): "
                             "letters, digits and !#$%&'*+.^_`|~-.", reserved=RESERVED_HEADERS, ascii_only=True)
    issues.raise_if_any()

    connector_id = new_id()
    sealed = _seal(box(runtime), "http_connector", org_id, connector_id, {"headers": header_map, "env": {}})
    async with unit_of_work(runtime, org_id, audit=ctx.hook, bump_version=False) as uow:
        await _lock_org(uow)
        if await repo.by_name(uow.session, HttpConnector, org_id, name) is not None:
            raise Conflict(f"An HTTP connector named {name!r} exists already.", [FieldIssue("name", "Taken.")])
        try:
            row = await repo.add(uow.session, HttpConnector(
                id=connector_id, org_id=org_id, name=name, method=method, url_template=url_template,
                header_names=sorted(header_map), secrets_sealed=sealed, allowed_hosts=list(dict.fromkeys(hosts)),
                allow_private_addresses=bool(allow_private_addresses), connect_timeout_ms=connect,
                total_timeout_ms=total, max_response_bytes=cap, created_at=utcnow(), created_by=actor,
            ))
        except repo.Taken:
            raise Conflict(f"An HTTP connector named {name!r} exists already.", [FieldIssue("name", "Taken.")]) from None
        await uow.record("http_connector.registered", {
            "connector_id": row.id, "name": row.name, "method": row.method, "url_template": row.url_template,
            "header_names": row.header_names, "allowed_hosts": row.allowed_hosts,
            "allow_private_addresses": row.allow_private_addresses, "connect_timeout_ms": row.connect_timeout_ms,
            "total_timeout_ms": row.total_timeout_ms, "max_response_bytes": row.max_response_bytes,
        })
    return row


# --- bindings ------------------------------------------------------------------------------------
async def create_binding(
    runtime: Runtime, ctx: ChangeContext, actor: str, org_id: str, *, capability: str | None = None,
    http_connector_id: str | None = None, mcp_server_id: str | None = None, tool: str | None = None,
    amount_arg: str | None = None, currency_arg: str | None = None, counterparty_arg: str | None = None,
) -> ConnectorBinding:
    issues = _Issues()
    if (http_connector_id is None) == (mcp_server_id is None):
        issues.add("http_connector_id", "Give exactly one of http_connector_id and mcp_server_id.")
    if mcp_server_id is not None and not tool:
        issues.add("tool", "Required with mcp_server_id: the name of the server's tool.")
    if http_connector_id is not None and tool is not None:
        issues.add("tool", "Only with mcp_server_id.")
    if tool is not None and (len(tool) > MAX_TOOL_NAME or (tool and text_issue(tool) is not None)):
        issues.add("tool", f"Must be 1-{MAX_TOOL_NAME} characters without control characters.")
    if capability is None and http_connector_id is not None:
        issues.add("capability", "Required for an HTTP connector.")
    if capability is not None and not is_concrete(capability):
        issues.add("capability", "Must be resource:action, each of a-z, 0-9, _ and - (no wildcard).")
    for field, value in (("amount_arg", amount_arg), ("currency_arg", currency_arg),
                         ("counterparty_arg", counterparty_arg)):
        if value is not None and (len(value) > 128 or not ARG_PATH.match(value)):
            issues.add(field, "Must name an argument: a name or a dotted path (letters, digits, _), at most 128 characters.")
    issues.raise_if_any()

    async with unit_of_work(runtime, org_id, audit=ctx.hook, bump_version=False) as uow:
        await _lock_org(uow)
        server: McpServer | None = None
        if mcp_server_id is not None:
            server = await repo.get(uow.session, McpServer, org_id, _known(mcp_server_id))
            if server is None:
                raise NotFound("No such MCP server in this organization.")
            if server.tools is not None and tool not in server.tools:
                raise ValidationFailed("Request body failed validation.", [
                    FieldIssue("tool", f"Not one of the tools server {server.name!r} declared.")])
            capability = capability or mcp_capability(server.name, tool or "")
        elif http_connector_id is not None:
            if await repo.get(uow.session, HttpConnector, org_id, _known(http_connector_id)) is None:
                raise NotFound("No such HTTP connector in this organization.")
        assert capability is not None
        claimed = await repo.claimed_capabilities(uow.session, org_id)
        holder = claimed.get(capability)
        # The default S:T of a declared tool may be bound to that very tool (to name its
        # amount, currency and counterparty arguments); anything else that holds it is a conflict.
        is_own_default = (holder is not None and holder[0].startswith("tool ") and server is not None
                          and holder[1] == server.id and holder[2] == tool)
        if holder is not None and not is_own_default:
            raise Conflict(f"Capability {capability} is already performed by {holder[0]}.",
                           [FieldIssue("capability", "Taken.")])
        try:
            row = await repo.add(uow.session, ConnectorBinding(
                id=new_id(), org_id=org_id, capability=capability, target="mcp" if server is not None else "http",
                http_connector_id=http_connector_id, mcp_server_id=mcp_server_id, tool=tool,
                amount_arg=amount_arg, currency_arg=currency_arg, counterparty_arg=counterparty_arg,
                created_at=utcnow(), created_by=actor,
            ))
        except repo.Taken:
            raise Conflict(f"Capability {capability} is already bound.", [FieldIssue("capability", "Taken.")]) from None
        await uow.record("binding.created", {
            "binding_id": row.id, "capability": row.capability, "target": row.target,
            "http_connector_id": row.http_connector_id, "mcp_server_id": row.mcp_server_id, "tool": row.tool,
            "amount_arg": row.amount_arg, "currency_arg": row.currency_arg, "counterparty_arg": row.counterparty_arg,
        })
    return row


# --- reading and deleting ------------------------------------------------------------------------
async def list_rows(runtime: Runtime, model: Any, org_id: str, limit: int, offset: int) -> tuple[list[Any], int]:
    async with runtime.sessions() as session:
        return await repo.page(session, model, org_id, limit, offset)


async def get_row(runtime: Runtime, model: Any, org_id: str, row_id: str) -> Any:
    async with runtime.sessions() as session:
        row = await repo.get(session, model, org_id, _known(row_id))
    if row is None:
        raise NotFound()
    return row


async def delete_row(runtime: Runtime, ctx: ChangeContext, org_id: str, model: Any, row_id: str) -> None:
    """Delete one row of ``org_id``. A server or connector that a binding still names is
    refused (409 naming the bindings): delete the bindings first, deliberately."""
    _known(row_id)
    async with unit_of_work(runtime, org_id, audit=ctx.hook, bump_version=False) as uow:
        await _lock_org(uow)
        row = await repo.get(uow.session, model, org_id, row_id)
        if row is None:
            raise NotFound()
        if isinstance(row, (McpServer, HttpConnector)):
            bound = await repo.bindings_to(uow.session, org_id, server_id=row.id if isinstance(row, McpServer) else None,
                                           connector_id=row.id if isinstance(row, HttpConnector) else None)
            if bound:
                raise Conflict("Bindings still name it; delete them first.",
                               [FieldIssue("bindings", f"{b.id} ({b.capability})") for b in bound])
        await repo.delete(uow.session, row)
        if isinstance(row, McpServer):
            await uow.record("mcp_server.deleted", {"server_id": row.id, "name": row.name})
        elif isinstance(row, HttpConnector):
            await uow.record("http_connector.deleted", {"connector_id": row.id, "name": row.name})
        else:
            await uow.record("binding.deleted", {"binding_id": row.id, "capability": row.capability, "target": row.target})


__all__ = [
    "DEFAULT_CONNECT_TIMEOUT_MS", "DEFAULT_MAX_RESPONSE_BYTES", "DEFAULT_TOTAL_TIMEOUT_MS", "METHODS", "TRANSPORTS",
    "SecretUnreadable", "create_binding", "delete_row", "get_row", "list_rows", "open_secrets", "register_connector",
    "register_server",
]
