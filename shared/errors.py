"""The one error type that crosses service boundaries, with a stable code and a human message."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    """Stable codes. The gateway maps them to HTTP statuses in one place (services/gateway/errors.py)."""

    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    QUERY_REFUSED = "query_refused"
    QUERY_FAILED = "query_failed"
    QUERY_TIMEOUT = "query_timeout"
    UNKNOWN_SOURCE = "unknown_source"
    UNAVAILABLE = "unavailable"
    BUSY = "busy"  # a replica is at its limit of concurrent work; retry shortly (HTTP 503 + Retry-After)
    TIMEOUT = "timeout"
    INTERNAL = "internal"
    CONFLICT = "conflict"  # a connection name already taken, or a user's connection limit reached (409)
    CONNECTION_FAILED = "connection_failed"  # a user's database could not be opened or was refused (422)
    CONNECTIONS_OFF = "connections_off"  # CONNECTIONS_KEYS is not set on the query service (503)


# Module-level names for `from shared.errors import BAD_REQUEST`; each is the enum member.
BAD_REQUEST = ErrorCode.BAD_REQUEST
UNAUTHORIZED = ErrorCode.UNAUTHORIZED
FORBIDDEN = ErrorCode.FORBIDDEN
NOT_FOUND = ErrorCode.NOT_FOUND
QUERY_REFUSED = ErrorCode.QUERY_REFUSED
QUERY_FAILED = ErrorCode.QUERY_FAILED
QUERY_TIMEOUT = ErrorCode.QUERY_TIMEOUT
UNKNOWN_SOURCE = ErrorCode.UNKNOWN_SOURCE
UNAVAILABLE = ErrorCode.UNAVAILABLE
BUSY = ErrorCode.BUSY
TIMEOUT = ErrorCode.TIMEOUT
INTERNAL = ErrorCode.INTERNAL
CONFLICT = ErrorCode.CONFLICT
CONNECTION_FAILED = ErrorCode.CONNECTION_FAILED
CONNECTIONS_OFF = ErrorCode.CONNECTIONS_OFF


class ServiceError(Exception):
    """Raised for any failure that a caller should see as a code and a clear message."""

    def __init__(self, code: ErrorCode | str, message: str) -> None:
        super().__init__(message)
        # A plain str, so it encodes the same on every wire; it still equals the ErrorCode member.
        self.code = str(code)
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}

    @classmethod
    def from_dict(cls, data: Any) -> ServiceError:
        if not isinstance(data, dict):
            return cls(INTERNAL, "malformed error from a service")
        return cls(str(data.get("code", INTERNAL)), str(data.get("message", "unknown error")))

    def __repr__(self) -> str:
        return f"ServiceError({self.code!r}, {self.message!r})"


class ConfigError(ValueError):
    """Raised at start-up when an environment variable is missing or malformed."""
