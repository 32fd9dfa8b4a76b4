"""The gateway's decision steps without HTTP, org loading and audit, for tests:
required_capability -> evaluate -> quota (one backend call) -> settle, as gateway/service.py runs them."""
from __future__ import annotations

import time
from collections.abc import Callable, Container
from typing import Any

from gateway.capability import required_capability
from gateway.decision import Decision
from gateway.evaluate import Verifiers, evaluate
from gateway.quota import spend_or_check
from gateway.schemas import GatewayActionRequest
from gateway.settle import settle
from policies.compile import CompiledOrg
from store.quotas import QuotaBackend


class Steps:
    def __init__(self, quotas: QuotaBackend, check_override: Any = None, clock: Callable[[], float] = time.time,
                 cap_verifier: Any = None, used_overrides: Container[str] = frozenset()):
        self.quotas, self.clock = quotas, clock
        self.verifiers = Verifiers(check_override, cap_verifier, used_overrides)

    async def decide(self, req: GatewayActionRequest, org: CompiledOrg, *, spend: bool,
                     allowed_uapk_ids: tuple[str, ...] | None = None, capability: str | None = None) -> Decision:
        pending = evaluate(req, org, self.clock(), self.verifiers, capability=capability or required_capability(req),
                           allowed_uapk_ids=allowed_uapk_ids)
        return settle(pending, await spend_or_check(self.quotas, pending, execute=spend))
