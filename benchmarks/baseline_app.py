"""The baseline: the least a Litestar app can do per request with the same stack.

One POST endpoint that decodes a msgspec Struct (the same shape as a gateway request) and
answers a small fixed Struct. Served by uvicorn with the same workers and loop/http
implementation as ``bastion serve``, it is the ceiling Bastion's decision throughput is
compared with: the ratio says how much of the framework's capacity our own work costs.
"""
from __future__ import annotations

from typing import Any

import msgspec
from litestar import Litestar, post


class Action(msgspec.Struct):
    type: str
    tool: str
    params: dict[str, Any] = {}


class Decide(msgspec.Struct):
    uapk_id: str
    agent_id: str
    action: Action
    context: dict[str, Any] = {}
    capability_token: str | None = None


class Decision(msgspec.Struct):
    decision: str
    interaction_id: str


@post("/api/v1/gateway/execute", status_code=200)
async def execute(data: Decide) -> Decision:
    return Decision(decision="allow", interaction_id="0")


app = Litestar(route_handlers=[execute], debug=False, logging_config=None, openapi_config=None)
