"""Rendering: autoescaped Jinja2 templates shipped in the package, and the headers every
console page carries.

Litestar's own template engine is configured per application (``template_config`` in
``build_app``); the console renders with its own environment instead so that it stays a
router the app factory just mounts. Autoescaping is on for every template, and text from an
agent goes through ``visible``: control, bidirectional and invisible characters (core/text.py's
rule) are shown as ``U+XXXX`` badges instead of acting on the page.
"""
from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from litestar import Response
from litestar.datastructures import Cookie
from markupsafe import Markup, escape

from core.text import refused_char

# default-src 'self' and nothing inline: no script or style attribute, element or URL of
# another origin runs on a console page, even if a template ever failed to escape something.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    # Pages show pending actions and hold a CSRF token: never kept by a browser or proxy cache.
    "Cache-Control": "no-store",
}


@lru_cache(maxsize=4096)
def _shown(ch: str) -> str | None:
    """The badge text for a character the text rule refuses (multi-line: TAB and LF pass)."""
    if ch in "\t\n":
        return None
    return f"U+{ord(ch):04X}" if refused_char(ch, multiline=True) is not None or ch == "\r" else None


def visible(value: Any) -> Markup:
    """``value`` escaped, with every control/invisible character made visible as a badge."""
    text = value if isinstance(value, str) else pretty(value)
    out: list[str] = []
    start = 0
    for i, ch in enumerate(text):
        badge = _shown(ch)
        if badge is not None:
            out.append(str(escape(text[start:i])))
            out.append(f'<span class="cc" title="invisible or control character">{badge}</span>')
            start = i + 1
    out.append(str(escape(text[start:])))
    return Markup("".join(out))


def has_hidden(value: Any) -> bool:
    text = value if isinstance(value, str) else pretty(value)
    return any(_shown(ch) is not None for ch in text)


def pretty(value: Any) -> str:
    """JSON for people: indented, non-ASCII kept as is (so that ``visible`` can flag it)."""
    if value is None:
        return ""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def when(value: datetime | None) -> str:
    """A time for people, to the second, always in UTC (what the audit trail and the API use)."""
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@lru_cache(maxsize=1)
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("console", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["visible"] = visible
    env.filters["pretty"] = pretty
    env.filters["when"] = when
    env.tests["hidden"] = has_hidden
    return env


def page(template: str, *, status_code: int = 200, cookies: list[Cookie] | None = None, **context: Any) -> Response[str]:
    html = environment().get_template(template).render(**context)
    return Response(content=html, status_code=status_code, media_type="text/html; charset=utf-8",
                    headers=SECURITY_HEADERS, cookies=cookies or [])
