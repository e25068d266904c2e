"""The one place where service error codes become HTTP statuses and JSON bodies."""

from __future__ import annotations

from aiohttp import web

from shared import errors as e

STATUS = {
    e.BAD_REQUEST: 400,
    e.UNAUTHORIZED: 401,
    "forbidden": 403,
    e.NOT_FOUND: 404,
    "rate_limited": 429,
    "too_large": 413,
    "conversation_full": 409,
    e.QUERY_REFUSED: 422,
    e.UNKNOWN_SOURCE: 404,  # the same for a source the user may not use (services/gateway/access.py)
    e.QUERY_FAILED: 422,
    e.QUERY_TIMEOUT: 504,
    e.UNAVAILABLE: 503,
    e.BUSY: 503,
    e.TIMEOUT: 504,
    e.INTERNAL: 500,
    e.CONFLICT: 409,
    e.CONNECTION_FAILED: 422,
    e.CONNECTIONS_OFF: 503,
}

RETRY_AFTER_S = "1"


def error_response(code: str, message: str, status: int | None = None, retry_after: int | None = None) -> web.Response:
    status = status or STATUS.get(code, 500)
    headers = {"Retry-After": str(retry_after) if retry_after else RETRY_AFTER_S} if status in (429, 503) else None
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


def from_service_error(exc: e.ServiceError) -> web.Response:
    return error_response(exc.code, exc.message, retry_after=getattr(exc, "retry_after", None))
