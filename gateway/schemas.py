"""Wire types of the gateway endpoints (the UAPK SDK's GatewayActionRequest and responses).

Requests forbid unknown fields (the SDK sends exactly these); ``params`` and ``context`` are
free-form objects. What a type cannot say is checked in one place,
``gateway.capability.required_capability``, on every path that takes an action.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from core.ids import UapkId

# The manifest grammar of agent ids (anchored with \A...\Z: "$" would accept a trailing
# newline): look-alikes, zero-width and control characters are 400, not an unknown agent.
Id = UapkId  # core/ids.py: the one UAPK-id grammar
# An agent instance id: visible ASCII only (no spaces, control or zero-width characters).
AgentId = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"\A[\x21-\x7e]{1,200}\Z")]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Text = Annotated[str, msgspec.Meta(max_length=2000)]
Short = Annotated[str, msgspec.Meta(max_length=320)]
Token = Annotated[str, msgspec.Meta(max_length=8192)]


class Action(msgspec.Struct, forbid_unknown_fields=True):
    type: Name
    tool: Name
    params: dict[str, Any] = msgspec.field(default_factory=dict)
    # At least 0 (a negative amount would slip under every "amount_above" rule and token
    # max_amount); inf/NaN from non-JSON sources are refused in required_capability.
    amount: Annotated[float, msgspec.Meta(ge=0)] | None = None
    currency: Annotated[str, msgspec.Meta(max_length=16)] | None = None
    description: Text | None = None
    # Optional, and only ever equal to "tool:type" (a label that differs would let an agent
    # name one capability and perform another): see required_capability.
    capability: Name | None = None


class Counterparty(msgspec.Struct, forbid_unknown_fields=True):
    id: Short | None = None
    name: Short | None = None
    email: Short | None = None
    domain: Short | None = None
    jurisdiction: Short | None = None


class GatewayActionRequest(msgspec.Struct, forbid_unknown_fields=True):
    uapk_id: Id
    agent_id: AgentId
    action: Action
    counterparty: Counterparty | None = None
    context: dict[str, Any] | None = None
    capability_token: Token | None = None
    override_token: Token | None = None


class ReasonOut(msgspec.Struct):
    code: str
    message: str
    details: dict[str, Any]


class TraceOut(msgspec.Struct, omit_defaults=True):
    check: str
    result: Literal["pass", "fail", "escalate", "skip"]
    detail: str = ""
    rule: str | None = None


class EvaluateResponse(msgspec.Struct):
    interaction_id: str
    decision: Literal["allow", "deny", "escalate"]
    reasons: list[ReasonOut]
    approval_id: str | None
    timestamp: str
    policy_version: str
    trace: list[TraceOut]


class ExecuteResponse(msgspec.Struct):
    interaction_id: str
    decision: Literal["allow", "deny", "escalate"]
    reasons: list[ReasonOut]
    approval_id: str | None
    timestamp: str
    policy_version: str
    executed: bool
    result: None
