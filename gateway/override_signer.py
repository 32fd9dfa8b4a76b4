"""The override signer the approvals service takes (services/approvals.py: the token format is
the gateway's, above the service layer, so the caller passes it in) — one for the API's and
the console's approve. The token names the approval's exact action and counterparty; ``iat``
is the decision's time, so the agent's poll re-signs the same token."""
from __future__ import annotations

from gateway.overrides import bound_action, issue_override
from services.approvals import OverrideSigner
from store.models import Approval
from store.runtime import Runtime


def override_signer(runtime: Runtime) -> OverrideSigner:
    def sign(approval: Approval, ttl: int, iat: int) -> tuple[str, str, int]:
        return issue_override(
            runtime.keys, runtime.settings,
            approval_id=approval.id, org_id=approval.org_id, uapk_id=approval.uapk_id, agent_id=approval.agent_id,
            capability=approval.capability, **bound_action(approval.action or {}, approval.counterparty),
            ttl_seconds=ttl, now=iat,
        )

    return sign
