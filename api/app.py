"""The management API's routes."""
from __future__ import annotations

from typing import Any

from api import accounts


def api_routes() -> list[Any]:
    return [*accounts.ROUTES]
