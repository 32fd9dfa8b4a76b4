"""The spec's error body on every error, the framework's own included."""
from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException

from core import wire
from core.errors import BastionError

log = logging.getLogger("bastion.errors")

_STATUS = {
    "VALIDATION_ERROR": 400,
    "AUTHENTICATION_REQUIRED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "METHOD_NOT_ALLOWED": 405,
    "CONFLICT": 409,
    "PAYLOAD_TOO_LARGE": 413,
    "UNSUPPORTED_MEDIA_TYPE": 415,
    "UNPROCESSABLE_ENTITY": 422,
    "RATE_LIMIT_EXCEEDED": 429,
    "INTERNAL_ERROR": 500,
    "SERVICE_UNAVAILABLE": 503,
}
_CODE_BY_STATUS = {
    400: "VALIDATION_ERROR",
    401: "AUTHENTICATION_REQUIRED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "UNPROCESSABLE_ENTITY",
    429: "RATE_LIMIT_EXCEEDED",
    503: "SERVICE_UNAVAILABLE",
}


class ErrorDetail(msgspec.Struct):
    field: str
    issue: str


class ErrorBody(msgspec.Struct):
    code: str
    message: str
    details: list[ErrorDetail]
    request_id: str


def request_id_of(request: Request[Any, Any, Any]) -> str:
    return request.scope.get("state", {}).get("request_id", "")  # type: ignore[no-any-return]


def error_response(
    request: Request[Any, Any, Any],
    code: str,
    message: str,
    details: list[ErrorDetail] | None = None,
    status: int | None = None,
    headers: dict[str, str] | None = None,
) -> Response[ErrorBody]:
    body = ErrorBody(code=code, message=message, details=details or [], request_id=request_id_of(request))
    return Response(
        body,
        status_code=status or _STATUS.get(code, 500),
        media_type=MediaType.JSON,
        headers=headers,
    )


def field_issue(message: str, key: str | None) -> tuple[str, str]:
    """The dotted field and the issue, in Bastion's wording, from a decoder message and
    Litestar's key (the parameter's name when the message carries no path)."""
    found = wire.issue_of(message)
    field = found.field
    # Litestar validates the body as a parameter named ``data``: its paths start there.
    if field == "data":
        field = "body"
    elif field.startswith("data."):
        field = field[5:]
    if field == "body" and key and key != "data":
        field = key
    return field, found.issue


def _from_validation(exc: ValidationException) -> list[ErrorDetail]:
    out: list[ErrorDetail] = []
    extra = exc.extra if isinstance(exc.extra, list) else []
    cause = exc.__cause__
    # With one error, msgspec's own message (on the cause) still carries the full path.
    cause_msg = str(cause) if isinstance(cause, msgspec.ValidationError) and len(extra) == 1 else None
    for item in extra:
        if isinstance(item, dict):
            message = str(item.get("message", ""))
            if cause_msg and cause_msg.startswith(message) and item.get("source") == "body":
                message = cause_msg
            fld, issue = field_issue(message, item.get("key"))
            out.append(ErrorDetail(field=fld[:200], issue=issue[:500]))
    return out


def handle_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    if isinstance(exc, BastionError):
        details = [ErrorDetail(field=d.field, issue=d.issue) for d in exc.details]
        return error_response(request, exc.code, exc.message, details, headers=exc.headers or None)
    if isinstance(exc, ValidationException):
        details = _from_validation(exc)
        msg = "Request body or query parameters failed validation."
        if [(d.field, d.issue) for d in details] == [("body", "'data'")]:
            # Litestar skips the decoder for an empty body and then misses its ``data`` kwarg:
            # say what read_json and BastionRequest.json say of a missing body.
            msg, details = "Request body is required.", [ErrorDetail("body", "A JSON object is required.")]
        if not details:
            detail = str(exc.detail or "")
            found = wire.issue_of(detail) if detail else None
            details = [ErrorDetail(field="body", issue=found.issue if found else "Invalid request.")]
        return error_response(request, "VALIDATION_ERROR", msg, details, 400)
    if isinstance(exc, HTTPException):
        status = exc.status_code
        code = _CODE_BY_STATUS.get(status, "INTERNAL_ERROR" if status >= 500 else "VALIDATION_ERROR")
        message = {
            404: "Resource does not exist or is not visible to the caller.",
            405: "Method not allowed on this resource.",
            413: "Request body too large.",
        }.get(status, str(exc.detail or "Request failed."))
        if status == 400:
            found = wire.issue_of(str(exc.detail or ""))
            return error_response(request, code, "Malformed request.", [ErrorDetail(found.field, found.issue)], 400)
        headers = dict(exc.headers or {}) or None
        return error_response(request, code, message, None, status, headers)
    if isinstance(exc, UnicodeDecodeError):
        # Litestar decodes the body as UTF-8 before msgspec sees it.
        return error_response(
            request, "VALIDATION_ERROR", "Malformed request.", [ErrorDetail("body", "Body is not valid UTF-8.")], 400
        )
    if isinstance(exc, RecursionError):
        # msgspec/Litestar blow the stack on pathologically nested JSON: that is bad input.
        return error_response(
            request, "VALIDATION_ERROR", "Malformed request.", [ErrorDetail("body", "JSON nested too deeply.")], 400
        )
    if _is_bad_data(exc):
        # Input the database cannot store (a NUL character, a number out of range): the
        # client's fault, never a 500.
        return error_response(
            request, "VALIDATION_ERROR", "Request body or query parameters failed validation.",
            [ErrorDetail("body", "Contains a value that cannot be stored (e.g. a NUL character or an out-of-range number).")],
            400,
        )
    if _is_unavailable(exc):
        log.warning("dependency unavailable: %s", type(exc).__name__)
        return error_response(
            request, "SERVICE_UNAVAILABLE", "Temporary outage. Retry with exponential backoff.", None, 503,
            {"Retry-After": "1"},
        )
    log.exception("unhandled error", extra={"request_id": request_id_of(request)})
    return error_response(
        request, "INTERNAL_ERROR", "Unexpected server error. Include the request_id when reporting.", None, 500
    )


def _is_bad_data(exc: Exception) -> bool:
    """A database "data exception" (SQLSTATE class 22) raised by a value the request sent."""
    from sqlalchemy.exc import DBAPIError

    if not isinstance(exc, DBAPIError):
        return False
    orig = exc.orig
    state = getattr(orig, "sqlstate", None) or getattr(getattr(orig, "__cause__", None), "sqlstate", None)
    return isinstance(state, str) and state.startswith("22")


def _is_unavailable(exc: Exception) -> bool:
    """Database or Redis unreachable: a 503 the client may retry, not a 500."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    if isinstance(exc, (RedisConnectionError, RedisTimeoutError, OperationalError, InterfaceError, ConnectionError, TimeoutError, OSError)):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return False


EXCEPTION_HANDLERS: dict[type[Exception], Any] = {Exception: handle_exception}
