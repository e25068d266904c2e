"""describe_schema for the gateway: the NATS client of `query.schema`, and `GET /api/schema`."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from nats.aio.client import Client as NATS

from services.gateway import keys
from services.gateway.handlers import current_session
from services.gateway.sources import user_source
from shared.bus import request
from shared.contracts import ConnectionRef, Subjects
from shared.errors import BAD_REQUEST, ServiceError
from shared.users import user_id

SCHEMA_TIMEOUT_S = 15.0
"""How long the gateway waits for a description (the query service stops at QUERY_SCHEMA_TIMEOUT_S, 10 s by default)."""
MAX_TABLES_ASKED = 50
_SOURCE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


async def describe_schema(
    nc: NATS, subjects: Subjects, source: str | None, tables: Sequence[str] | None, timeout: float = SCHEMA_TIMEOUT_S, *, connection: ConnectionRef | None = None
) -> dict[str, Any]:
    """The `query.schema` reply for `source` (None: the default source) or the user's `connection`: an overview, or details of `tables`.

    Raises ServiceError: bad_request, unknown_source, query_timeout, unavailable, timeout.
    """
    payload: dict[str, Any] = {"source": None if connection else source, "tables": list(tables) if tables is not None else None}
    if connection is not None:
        payload["connection"] = {"owner": connection.owner, "id": connection.id}
    return await request(nc, subjects.query_schema, payload, timeout=timeout)


def _parameters(query: Any) -> tuple[str | None, list[str] | None]:
    source = query.get("source") or None
    if source is not None and not _SOURCE.match(source):
        raise ServiceError(BAD_REQUEST, "'source' must be 1-64 letters, digits, '_' or '-'")
    raw = query.get("tables")
    if raw is None or raw == "":
        return source, None
    tables = [name.strip() for name in raw.split(",")]
    if any(not name for name in tables):
        raise ServiceError(BAD_REQUEST, "'tables' must be a comma-separated list of table names, with no empty name")
    if len(tables) > MAX_TABLES_ASKED:
        raise ServiceError(BAD_REQUEST, f"'tables' may name at most {MAX_TABLES_ASKED} tables")
    if any(len(name) > 256 for name in tables):
        raise ServiceError(BAD_REQUEST, "a table name in 'tables' is longer than 256 characters")
    return source, tables


async def get_schema(http_request: web.Request) -> web.Response:
    """GET /api/schema?source=&tables=a,b: the describe_schema reply as JSON (needs a session)."""
    _, session = await current_session(http_request)
    for name in http_request.query:
        if name not in ("source", "tables"):
            raise ServiceError(BAD_REQUEST, f"unknown parameter {name!r}; use 'source' and 'tables'")
    if any(len(http_request.query.getall(name)) > 1 for name in http_request.query):
        raise ServiceError(BAD_REQUEST, "give each parameter once")
    source, tables = _parameters(http_request.query)
    app = http_request.app
    connection = await user_source(app, user_id(session), source)
    reply = await describe_schema(app[keys.NATS_CLIENT], app[keys.SUBJECTS], source, tables, connection=connection)
    return web.json_response(reply)
