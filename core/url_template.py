"""URL templates of HTTP connectors: ``https://api.example.com/v1/customers/{customer_id}``.

Placeholders name an action parameter (``[A-Za-z_][A-Za-z0-9_]*``) and may stand only in the
path and the query: the scheme, host and port are fixed when the connector is registered, so
no argument an agent sends can choose where the request goes (core/netpolicy.py checks the
host again before every call). A value is percent-encoded as one path or query component
(``/``, ``?``, ``#``, ``&`` and ``=`` included), so it cannot add a path segment or a
parameter either.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import quote, urlsplit

PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
NAME = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]{0,63}\Z", re.ASCII)
MAX_TEMPLATE = 2048


class TemplateError(ValueError):
    pass


def placeholders(template: str) -> list[str]:
    """The parameter names of ``template``, in order (raises :class:`TemplateError`)."""
    names: list[str] = []
    for match in PLACEHOLDER.finditer(template):
        if not NAME.match(match.group(1)):
            raise TemplateError(f"{{{match.group(1)}}}: a placeholder names a parameter: letters, digits and _, "
                                "not starting with a digit")
        names.append(match.group(1))
    if "{" in PLACEHOLDER.sub("", template) or "}" in PLACEHOLDER.sub("", template):
        raise TemplateError("Unbalanced { or }.")
    return names


def template_issue(template: str) -> str | None:
    """Why ``template`` is not an acceptable URL template, or None."""
    if not template or len(template) > MAX_TEMPLATE:
        return f"Must be 1-{MAX_TEMPLATE} characters."
    if not template.isascii() or any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in template):
        return "Must be ASCII without spaces or control characters (percent-encode the rest)."
    try:
        placeholders(template)
    except TemplateError as exc:
        return str(exc)
    try:
        parts = urlsplit(PLACEHOLDER.sub("x", template))
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        return "Must be an absolute http or https URL."
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "Must be an absolute http or https URL."
    if "{" in urlsplit(template).netloc:
        return "Placeholders may stand only in the path and the query, never in the host or port."
    if parts.username is not None or parts.password is not None:
        return "Must not carry credentials (user:password@); use headers, which are stored encrypted."
    if parts.fragment:
        return "Must not have a fragment (#...)."
    return None


def render(template: str, params: Mapping[str, object]) -> str:
    """``template`` with each placeholder replaced by its parameter, percent-encoded (strings
    as they are, numbers and booleans as JSON writes them). A missing parameter, or one that
    is an object or a list, raises :class:`TemplateError`."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in params:
            raise TemplateError(f"missing parameter {name!r}")
        raw = params[name]
        if isinstance(raw, bool):
            text = "true" if raw else "false"
        elif isinstance(raw, (str, int, float)):
            text = str(raw)
        else:
            raise TemplateError(f"parameter {name!r} must be a string or a number")
        return quote(text, safe="")

    return PLACEHOLDER.sub(value, template)
