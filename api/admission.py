"""Admission as a Litestar guard, so a controller's handler receives an admitted ``Caller``
and a typed ``data:`` body.

Guards run before Litestar parses the body. ``admitted(resource, action)`` does what
``httpkit.auth.admit`` does (authenticate, the caller's role in the path's organization, its
own rate limit, the role check) and keeps the Caller for the ``caller`` dependency; so a
request is answered 401, 404, 429 or 403 before its body is looked at, exactly as when the
handler called ``admit`` and read its body afterwards.
"""
from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.di import Provide

from core.errors import NotFound
from httpkit.auth import Caller, admit

Guard = Callable[[ASGIConnection[Any, Any, Any, Any], Any], Awaitable[None]]
_CALLER = "bastion.caller"


def admitted(resource: str, action: str, tier: str = "standard") -> Guard:
    """A guard admitting the caller to ``{org_id}`` for ``resource:action`` (``tier``: the
    rate-limit tier, ``"emergency"`` for the routes that stop an agent)."""

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _handler: Any) -> None:
        request: Request[Any, Any, Any] = connection  # type: ignore[assignment]  # HTTP routes get the Request
        caller = await admit(request, connection.path_params["org_id"], resource, action, tier)
        connection.scope.setdefault("state", {})[_CALLER] = caller  # type: ignore[typeddict-item]

    return guard


def path_id(name: str, pattern: re.Pattern[str]) -> Guard:
    """A guard answering 404 for a ``{name}`` path parameter that is not an id we could have
    issued (before the body is read, as a missing one would be)."""

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _handler: Any) -> None:
        if not pattern.fullmatch(str(connection.path_params.get(name, ""))):
            raise NotFound()

    return guard


def _caller(request: Request[Any, Any, Any]) -> Caller:
    caller = request.scope.get("state", {}).get(_CALLER)
    if not isinstance(caller, Caller):  # a handler without an ``admitted`` guard
        raise RuntimeError("no admitted caller: add an admitted(...) guard to this route")
    return caller


# ``dependencies=CALLER`` on a controller: handlers take ``caller: Caller``.
CALLER = {"caller": Provide(_caller, sync_to_thread=False)}
