"""The one error type that crosses service boundaries, with a stable code and a human message."""

from __future__ import annotations

from enum import StrEnum, global_enum
from typing import Any


# global_enum also makes each member a module-level name (`from shared.errors import BAD_REQUEST`), as `re` does for its flags.
@global_enum
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
            return cls(ErrorCode.INTERNAL, "malformed error from a service")
        return cls(str(data.get("code", ErrorCode.INTERNAL)), str(data.get("message", "unknown error")))

    def __repr__(self) -> str:
        return f"ServiceError({self.code!r}, {self.message!r})"


class ConfigError(ValueError):
    """Raised at start-up when an environment variable is missing or malformed."""
