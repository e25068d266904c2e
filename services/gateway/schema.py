"""`GET /api/schema`: describe_schema over HTTP (the `query.schema` client is clients.QueryClient)."""

from __future__ import annotations

import re
from typing import Any

import msgspec
from aiohttp import web

from services.gateway import keys
from services.gateway.access import source_grant
from services.gateway.auth.identity import current_session
from services.gateway.sources import user_source
from shared.errors import BAD_REQUEST, ServiceError
from shared.users import user_id

MAX_TABLES_ASKED = 50
_SOURCE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


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
    connection = await user_source(http_request.app, user_id(session), source)
    if connection is not None:  # the caller's own database (services/gateway/sources.py)
        reply = await http_request.app[keys.QUERY].schema(source, tables, connection=connection)
    else:
        grant = source_grant(http_request.app[keys.CONFIG], session, source)
        reply = await http_request.app[keys.QUERY].schema(grant.source, tables, role=grant.role)
    return web.json_response(msgspec.to_builtins(reply))
