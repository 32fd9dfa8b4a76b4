"""Names of upstream MCP tools as capabilities: a tool ``T`` of MCP server ``S`` is ``S:T``.

Manifests, policy rules, quotas and approvals all speak the capability grammar
(``policies.capabilities``: two segments of ``[a-z0-9_-]+``, at most 128 characters), but MCP
tool names are free text (``getUser``, ``issues.list``, ``Créer facture``). The mapping is a pure,
deterministic function of the name, so that a capability written in a manifest today still
names the same tool tomorrow and on every process:

* ``camelCase`` and ``PascalCase`` boundaries become ``_`` (``getUser`` -> ``get_user``);
* ASCII letters are lowercased; ``[a-z0-9_-]`` are kept; every other character becomes ``_``;
* a name that does not fit the segment's room keeps a readable prefix and ends with ``-`` and
  the first 8 hex digits of the SHA-256 of the original name, so two long names that share
  their prefix stay apart.

The mapping loses information on purpose (``get.user`` and ``get_user`` give the same
segment): a readable capability is worth more than an injective one, and :func:`map_tools`
refuses a set of tools in which two names map to the same capability, naming both, so that
registration answers 409 rather than letting one tool's grant cover another.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from policies.capabilities import MAX_LEN, is_concrete

SEGMENT = re.compile(r"\A[a-z0-9_-]+\Z", re.ASCII)
# A server's name is one segment; leave the tool at least this much of the 128 characters.
MAX_SERVER_NAME = 48
_HASH_LEN = 8
_KEEP = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")


class ToolNameError(ValueError):
    """A name that cannot be mapped at all (empty)."""


@dataclass(frozen=True)
class Collision:
    """Two or more distinct tool names that map to one capability."""

    capability: str
    names: tuple[str, ...]


class ToolNameCollision(ValueError):
    def __init__(self, collisions: list[Collision]):
        self.collisions = collisions
        text = "; ".join(f"{c.capability} <- {', '.join(map(repr, c.names))}" for c in collisions)
        super().__init__(f"tool names that map to the same capability: {text}")


def is_server_name(name: object) -> bool:
    """A server name is already a segment (it is chosen by an admin, not by the upstream)."""
    return isinstance(name, str) and 0 < len(name) <= MAX_SERVER_NAME and SEGMENT.match(name) is not None


def to_segment(name: str, max_len: int = MAX_LEN) -> str:
    """``name`` as one capability segment of at most ``max_len`` characters."""
    if not name:
        raise ToolNameError("an empty name cannot be a capability segment")
    if max_len <= _HASH_LEN + 1:
        raise ValueError(f"max_len must exceed {_HASH_LEN + 1}")
    out: list[str] = []
    previous = ""
    for ch in name:
        if "A" <= ch <= "Z":
            # A lower-case letter or digit followed by a capital starts a new word.
            if previous and ("a" <= previous <= "z" or "0" <= previous <= "9"):
                out.append("_")
            out.append(ch.lower())
        elif ch in _KEEP:
            out.append(ch)
        else:
            out.append("_")
        previous = ch
    segment = "".join(out)
    if len(segment) > max_len:
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_LEN]
        segment = f"{segment[: max_len - _HASH_LEN - 1]}-{digest}"
    return segment


def mcp_capability(server: str, tool: str) -> str:
    """The capability of tool ``tool`` of server ``server`` (a valid server name)."""
    if not is_server_name(server):
        raise ToolNameError(f"not a server name: {server!r}")
    capability = f"{server}:{to_segment(tool, MAX_LEN - len(server) - 1)}"
    if not is_concrete(capability):  # pragma: no cover - to_segment only yields the grammar
        raise AssertionError(capability)
    return capability


def collisions(server: str, tools: list[str] | tuple[str, ...]) -> list[Collision]:
    """Every capability that two or more *distinct* names of ``tools`` map to."""
    by_capability: dict[str, list[str]] = {}
    for tool in dict.fromkeys(tools):  # a name listed twice is one tool, not a collision
        by_capability.setdefault(mcp_capability(server, tool), []).append(tool)
    return [Collision(cap, tuple(names)) for cap, names in sorted(by_capability.items()) if len(names) > 1]


def map_tools(server: str, tools: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``{tool name: capability}`` for the tools of ``server``; raises
    :class:`ToolNameCollision` when two distinct names map to the same capability."""
    found = collisions(server, tools)
    if found:
        raise ToolNameCollision(found)
    return {tool: mcp_capability(server, tool) for tool in tools}
