"""Recent queries for the gateway: the client of `session.recent.*`, `GET /api/recent-queries`, and the record of each query run from the editor.

The session service keeps the last RECENT_MAX queries per user and source (services/session/recent.py).
POST /api/query records each query the query service accepted; a failure to record is logged and
never fails the query.
"""

from __future__ import annotations

import re

import structlog
from aiohttp import web
from nats.aio.client import Client as NATS

# The module, not its function: conversations imports handlers, which imports this module.
from services.gateway import conversations, keys
from shared.bus import request
from shared.contracts import RECENT_MAX, RecentAdd, RecentList, RecentQueries, Subjects
from shared.errors import BAD_REQUEST, ServiceError

log = structlog.get_logger(__name__)

RECENT_TIMEOUT_S = 2.0
DEFAULT_SOURCE = "default"
"""The query service's name for the source used when a request names none."""
_SOURCE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


async def recent_queries(nc: NATS, subjects: Subjects, uid: str, source: str | None, limit: int = RECENT_MAX) -> RecentQueries:
    """The user's newest queries on `source` (None: the default source); raises ServiceError."""
    payload = RecentList(uid=uid, source=source or DEFAULT_SOURCE, limit=limit)
    return await request(nc, subjects.session_recent("list"), payload, timeout=RECENT_TIMEOUT_S, reply=RecentQueries)


async def remember(nc: NATS, subjects: Subjects, uid: str, source: str | None, sql: str) -> None:
    """Record `sql` as the user's newest query on `source`; a failure is logged, not raised."""
    try:
        await request(nc, subjects.session_recent("add"), RecentAdd(uid=uid, source=source or DEFAULT_SOURCE, sql=sql), timeout=RECENT_TIMEOUT_S)
    except ServiceError as exc:
        log.warning("recent_query_not_recorded", code=exc.code, error=exc.message)


async def get_recent(http_request: web.Request) -> web.Response:
    """GET /api/recent-queries?source=&limit=: the caller's recent queries on a source, newest first."""
    uid = await conversations.caller_uid(http_request)
    source = http_request.query.get("source") or None
    if source is not None and not _SOURCE.match(source):
        raise ServiceError(BAD_REQUEST, "'source' must be 1-64 letters, digits, '_' or '-'")
    raw_limit = http_request.query.get("limit", str(RECENT_MAX))
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= RECENT_MAX:
        raise ServiceError(BAD_REQUEST, f"'limit' must be a whole number from 1 to {RECENT_MAX}")
    app = http_request.app
    reply = await recent_queries(app[keys.NATS_CLIENT], app[keys.SUBJECTS], uid, source, int(raw_limit))
    queries = [{"sql": q.sql, "at": q.at} for q in reply.queries]
    return web.json_response({"source": source or DEFAULT_SOURCE, "queries": queries, "local": reply.local})


def setup(app: web.Application) -> None:
    app.router.add_get("/api/recent-queries", get_recent)
