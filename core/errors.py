"""Domain errors. They carry the spec's error code and field details but know no HTTP:
``httpkit.errors`` maps each to its status and the error body."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FieldIssue:
    field: str
    issue: str


@dataclass
class BastionError(Exception):
    message: str
    details: list[FieldIssue] = field(default_factory=list)
    code: str = "INTERNAL_ERROR"
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:  # pragma: no cover - for logs
        return f"{self.code}: {self.message}"


class ValidationFailed(BastionError):
    def __init__(self, message: str = "Request body failed validation.", details: list[FieldIssue] | None = None):
        super().__init__(message, details or [], "VALIDATION_ERROR")


class AuthenticationRequired(BastionError):
    def __init__(self, message: str = "Missing or invalid credentials."):
        super().__init__(message, [], "AUTHENTICATION_REQUIRED")


class PermissionDenied(BastionError):
    def __init__(self, message: str = "Insufficient permissions.", details: list[FieldIssue] | None = None):
        super().__init__(message, details or [], "PERMISSION_DENIED")


class NotFound(BastionError):
    def __init__(self, message: str = "Resource does not exist or is not visible to the caller."):
        super().__init__(message, [], "NOT_FOUND")


class Conflict(BastionError):
    def __init__(self, message: str, details: list[FieldIssue] | None = None):
        super().__init__(message, details or [], "CONFLICT")


class Unprocessable(BastionError):
    def __init__(self, message: str, details: list[FieldIssue] | None = None):
        super().__init__(message, details or [], "UNPROCESSABLE_ENTITY")


class RateLimited(BastionError):
    def __init__(self, message: str, retry_after: int, headers: dict[str, str] | None = None):
        h = dict(headers or {})
        h["Retry-After"] = str(max(1, retry_after))
        super().__init__(message, [], "RATE_LIMIT_EXCEEDED", h)


class ServiceUnavailable(BastionError):
    def __init__(self, message: str = "Temporary outage. Retry with exponential backoff.", retry_after: int = 1):
        super().__init__(message, [], "SERVICE_UNAVAILABLE", {"Retry-After": str(retry_after)})


class UnsupportedMediaType(BastionError):
    def __init__(self, message: str = "Request bodies must be JSON (Content-Type: application/json)."):
        super().__init__(message, [], "UNSUPPORTED_MEDIA_TYPE")
