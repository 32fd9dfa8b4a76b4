"""``limit``/``offset`` query parameters with the spec's bounds; out of range → 400.

``pagination()`` declares them as typed Litestar parameters (documented in the OpenAPI
document); ``page_params`` reads them from a raw query (for handlers not yet converted)."""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from litestar.di import Provide
from litestar.params import Parameter

from core.errors import FieldIssue, ValidationFailed

MAX_LIMIT = 100
_DIGITS = re.compile(r"^[0-9]{1,10}$")


@dataclass(frozen=True)
class Page:
    limit: int
    offset: int


def _int_param(query: Mapping[str, Any], name: str, default: int, lo: int, hi: int | None) -> tuple[int, FieldIssue | None]:
    raw = query.get(name)
    if raw is None:
        return default, None
    text = str(raw).strip()
    if not _DIGITS.match(text):
        return default, FieldIssue(name, "Must be a non-negative integer.")
    value = int(text)
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        return default, FieldIssue(name, f"Must be {bound}.")
    return value, None


def page_params(query: Mapping[str, Any], default_limit: int = 25) -> Page:
    limit, e1 = _int_param(query, "limit", default_limit, 1, MAX_LIMIT)
    offset, e2 = _int_param(query, "offset", 0, 0, 10**9)
    issues = [e for e in (e1, e2) if e]
    if issues:
        raise ValidationFailed("Query parameters failed validation.", issues)
    return Page(limit, offset)


MAX_OFFSET = 10**9


def _page_provider(default_limit: int) -> Any:
    async def page(
        limit: Annotated[int, Parameter(ge=1, le=MAX_LIMIT, description=f"Items per page (1-{MAX_LIMIT}).")] = default_limit,
        offset: Annotated[int, Parameter(ge=0, le=MAX_OFFSET, description="Items to skip.")] = 0,
    ) -> Page:
        return Page(limit, offset)

    return page


def pagination(default_limit: int = 25) -> dict[str, Provide]:
    """``dependencies=`` for a list handler that takes ``page: Page``: ``limit`` and ``offset``
    become typed query parameters, validated by Litestar (400 naming the parameter) and listed
    in the OpenAPI document, where ``page_params`` read them by hand unseen."""
    return {"page": Provide(_page_provider(default_limit))}
