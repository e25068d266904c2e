"""Which database a request's `source` names: one of the caller's own connections, or else an operator's source.

`user_source` is the one place that decides it; a user's connection is reached only
through its owner's requests (the session service finds records only under their owner).
"""

from __future__ import annotations

import structlog
from aiohttp import web

from services.gateway import keys
from shared.contracts import ConnectionRecord, ConnectionRef
from shared.errors import ServiceError

log = structlog.get_logger(__name__)

DIALECTS = {"postgresql": "postgres", "mysql": "mysql"}
"""A connection's dialect as the query service names its sources' dialects (the SQL guard's names)."""


async def user_connections(app: web.Application, uid: str) -> list[ConnectionRecord]:
    """The user's connections, by name (sealed passwords included: opaque here, and never sent on)."""
    return await app[keys.CONNECTIONS].list(uid)


async def user_source(app: web.Application, uid: str | None, source: str | None) -> ConnectionRef | None:
    """The caller's own connection named `source`, or None (then `source` is an operator's source, or unknown).

    When the session service cannot list them, the operator's sources still serve (a user's
    own name then answers as an unknown source).
    """
    if not source or not uid:
        return None
    try:
        records = await user_connections(app, uid)
    except ServiceError as exc:
        log.warning("connections_unavailable", error=exc.message)
        return None
    for record in records:
        if record.name == source:
            return ConnectionRef(uid, record.id)
    return None
