"""The management API's routes."""
from __future__ import annotations

from typing import Any

from api import accounts
from api import approvals as approvals_api
from api import audit as audit_api
from api import capability_tokens as capability_tokens_api
from api import connectors as connectors_api
from api import manifests as manifests_api
from api import policies as policies_api
from console.routes import console_router


def api_routes() -> list[Any]:
    return [*accounts.ROUTES, *approvals_api.ROUTES, *manifests_api.ROUTES, *capability_tokens_api.ROUTES, *audit_api.ROUTES, *policies_api.ROUTES,
            *connectors_api.ROUTES, console_router()]
