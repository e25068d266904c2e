"""Which database a request's `source` names: one of the caller's own connections, or else an operator's source.

`user_source` is the one place that decides it; a user's connection is reached only
through its owner's requests (the session service finds records only under their owner).
"""

from __future__ import annotations

from aiohttp import web

from services.gateway import keys
from shared.bus import request
from shared.contracts import ConnectionList, ConnectionRecord, ConnectionRecords, ConnectionRef

STORE_TIMEOUT_S = 3.0
DIALECTS = {"postgresql": "postgres", "mysql": "mysql"}
"""A connection's dialect as the query service names its sources' dialects (the SQL guard's names)."""


async def user_connections(app: web.Application, uid: str) -> list[ConnectionRecord]:
    """The user's connections, by name (sealed passwords included: opaque here, and never sent on)."""
    reply = await request(app[keys.NATS_CLIENT], app[keys.SUBJECTS].session_connection("list"), ConnectionList(uid), timeout=STORE_TIMEOUT_S, reply=ConnectionRecords)
    return reply.records


async def user_source(app: web.Application, uid: str | None, source: str | None) -> ConnectionRef | None:
    """The caller's own connection named `source`, or None (then `source` is an operator's source, or unknown)."""
    if not source or not uid:
        return None
    for record in await user_connections(app, uid):
        if record.name == source:
            return ConnectionRef(uid, record.id)
    return None
