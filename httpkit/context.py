"""Outermost ASGI layer: request id, rate-limit headers and one JSON access-log line per request.

It wraps the whole Litestar app (not a route middleware) so that unknown routes, 405s and
413s get a request id and a log line too.
"""
from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# A sane client-supplied id: visible ASCII token characters only, at most 128 of them.
_SANE_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")

access_log = logging.getLogger("bastion.access")


class RequestContext:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid_raw = b""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                rid_raw = value
                break
        rid = rid_raw.decode() if rid_raw and _SANE_ID.match(rid_raw) else str(uuid.uuid4())
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        started = time.perf_counter()
        status_holder = [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode()))
                extra = state.get("response_headers")
                if extra:
                    headers.extend((k.lower().encode(), str(v).encode()) for k, v in extra.items())
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    "request",
                    extra={
                        "fields": {
                            "request_id": rid,
                            "org_id": state.get("org_id"),
                            "method": scope.get("method"),
                            "route": scope.get("path_template") or scope.get("path"),
                            "status": status_holder[0],
                            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                        }
                    },
                )


class JsonFormatter(logging.Formatter):
    """One JSON object per line. json.dumps escapes newlines and control characters, so a
    hostile value in any field cannot forge a second log line or colour a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=True, default=str)


def configure_logging(level: str = "INFO", stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("uvicorn.access", "httpx", "casbin", "casbin.policy", "casbin.enforcer", "casbin.role_manager", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
