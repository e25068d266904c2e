"""`GET /api/audit`: the audit trail for admins (ADMIN_EMAILS, ADMIN_GROUP); everyone else gets the 404 of a path that does not exist."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from services.gateway import keys
from services.gateway.access import is_admin
from services.gateway.audit import ERRORS
from services.gateway.auth.identity import current_session
from shared.audit import MAX_READ, AuditFilter, as_record, parse_since, read_events
from shared.errors import BAD_REQUEST, UNAVAILABLE, ServiceError


def _since(raw: str) -> float:
    try:
        return parse_since(raw)
    except ValueError as exc:
        raise ServiceError(BAD_REQUEST, f"'since': {exc}") from None


def audit_filter(query: Any) -> AuditFilter:
    """The filter of GET /api/audit (and `admin audit`): user, source, kind, since, limit."""
    allowed = {"user", "source", "kind", "since", "limit"}
    for name in query:
        if name not in allowed:
            raise ServiceError(BAD_REQUEST, f"unknown parameter {name!r}; use {', '.join(sorted(allowed))}")
    raw_limit = query.get("limit") or "1000"
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_READ:
        raise ServiceError(BAD_REQUEST, f"'limit' must be a whole number from 1 to {MAX_READ}")
    since = query.get("since")
    return AuditFilter(user=query.get("user") or None, source=query.get("source") or None, kind=query.get("kind") or None, since=_since(since) if since else None, limit=int(raw_limit))


async def get_audit(request: web.Request) -> web.Response:
    """GET /api/audit?user=&source=&kind=&since=&limit=: the newest matching events, oldest first; 404 for non-admins."""
    config = request.app[keys.CONFIG]
    try:
        _, session = await current_session(request)
    except ServiceError:
        session = None
    if session is None or not is_admin(config, session):
        raise web.HTTPNotFound()  # exactly what a path that does not exist answers
    wanted = audit_filter(request.query)
    try:
        events = await read_events(request.app[keys.NATS_CLIENT], config.audit_stream, request.app[keys.SUBJECTS], wanted)
    except ERRORS as exc:
        raise ServiceError(UNAVAILABLE, f"the audit trail cannot be read right now: {str(exc) or type(exc).__name__}") from None
    return web.json_response({"events": [as_record(e) for e in events]})
