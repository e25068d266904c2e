"""Recent queries for the gateway: `GET /api/recent-queries`, and the record of each query run from the editor.

The session service keeps the last RECENT_MAX queries per user and source (services/session/recent.py),
reached through clients.RecentClient. POST /api/query records each query the query service accepted;
a failure to record is logged and never fails the query.
"""

from __future__ import annotations

import re

import structlog
from aiohttp import web

from services.gateway import keys
from services.gateway.auth.identity import caller_uid
from services.gateway.clients import RECENT_DEFAULT_SOURCE, RecentClient
from shared.contracts import RECENT_MAX
from shared.errors import BAD_REQUEST, ServiceError

log = structlog.get_logger(__name__)

_SOURCE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


async def remember(client: RecentClient, uid: str, source: str | None, sql: str) -> None:
    """Record `sql` as the user's newest query on `source`; a failure is logged, not raised."""
    try:
        await client.add(uid, source, sql)
    except ServiceError as exc:
        log.warning("recent_query_not_recorded", code=exc.code, error=exc.message)


async def get_recent(request: web.Request) -> web.Response:
    """GET /api/recent-queries?source=&limit=: the caller's recent queries on a source, newest first."""
    uid = await caller_uid(request)
    source = request.query.get("source") or None
    if source is not None and not _SOURCE.match(source):
        raise ServiceError(BAD_REQUEST, "'source' must be 1-64 letters, digits, '_' or '-'")
    raw_limit = request.query.get("limit", str(RECENT_MAX))
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= RECENT_MAX:
        raise ServiceError(BAD_REQUEST, f"'limit' must be a whole number from 1 to {RECENT_MAX}")
    reply = await request.app[keys.RECENT].list(uid, source, int(raw_limit))
    queries = [{"sql": q.sql, "at": q.at} for q in reply.queries]
    return web.json_response({"source": source or RECENT_DEFAULT_SOURCE, "queries": queries, "local": reply.local})
