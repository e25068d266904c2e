"""`/api/connections`: each user's own databases (docs/connections.md), and `user_source`, which turns a source name into one of them.

Creating, changing and testing go to the query service (the only one that may see a
password in the clear, and that holds CONNECTIONS_KEYS); listing, reading and deleting go to
the session service, which stores the records and never sees a password unsealed. The
gateway forwards a password once and keeps nothing of it.
"""

from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import msgspec
from aiohttp import web

from services.gateway import keys
from services.gateway.handlers import identity, json_object
from services.gateway.sources import user_connections
from shared.bus import request
from shared.contracts import (
    CONNECTION_ID_PATTERN,
    ConnectionChanges,
    ConnectionCreate,
    ConnectionDelete,
    ConnectionDeleted,
    ConnectionFound,
    ConnectionGet,
    ConnectionRef,
    ConnectionSettings,
    ConnectionTest,
    ConnectionTested,
    ConnectionUpdate,
    ConnectionView,
    QueryPong,
)
from shared.errors import BAD_REQUEST, CONNECTIONS_OFF, NOT_FOUND, ServiceError
from shared.users import user_id

STORE_TIMEOUT_S = 3.0
OPEN_TIMEOUT_S = 20.0
"""How long the gateway waits for a create, change or test: the query service connects, checks the account, then stores."""
_ENABLED_CACHE_S = 5.0
_ID = re.compile(CONNECTION_ID_PATTERN)
_ENABLED = web.AppKey("connections_enabled", list)
_SCHEMES = {"postgresql": "postgresql", "postgres": "postgresql", "mysql": "mysql", "mariadb": "mysql"}
_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}
_SSL_MODES = {"disable": "disable", "allow": "require", "prefer": "require", "require": "require", "verify-ca": "verify-full", "verify-full": "verify-full"}


async def owner(http_request: web.Request) -> str:
    """The signed-in user's id (cookie or bearer); 401 when nobody."""
    who = await identity(http_request)
    uid = user_id(who.session)
    if not uid:
        raise ServiceError(BAD_REQUEST, "this session has no user id")
    return uid


async def enabled(app: web.Application) -> bool:
    """Whether the query service holds CONNECTIONS_KEYS (a yes is kept a few seconds; a no is asked again each time)."""
    until = app[_ENABLED]
    if time.monotonic() < until[0]:
        return True
    pong = await request(app[keys.NATS_CLIENT], app[keys.SUBJECTS].query_ping, {}, timeout=STORE_TIMEOUT_S, reply=QueryPong)
    if pong.connections:
        until[0] = time.monotonic() + _ENABLED_CACHE_S
    return pong.connections


async def _require_enabled(app: web.Application) -> None:
    if not await enabled(app):
        raise ServiceError(CONNECTIONS_OFF, "users' own database connections are off: set CONNECTIONS_KEYS on the query service (docs/connections.md)")


def _connection_id(http_request: web.Request) -> str:
    value = http_request.match_info["id"]
    if not _ID.match(value):
        raise ServiceError(NOT_FOUND, "no such connection")
    return value


def settings_from_url(name: Any, url: Any) -> dict[str, Any]:
    """`{name, url}`: a postgresql:// or mysql:// URL (sslmode/ssl-mode in its query) as the separate fields."""
    if not isinstance(url, str) or len(url) > 2048:
        raise ServiceError(BAD_REQUEST, "'url' must be a database URL of at most 2048 characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ServiceError(BAD_REQUEST, "'url' is not a valid URL") from None
    dialect = _SCHEMES.get(parts.scheme.lower())
    if dialect is None:
        raise ServiceError(BAD_REQUEST, "'url' must start with postgresql:// or mysql://")
    query = {key.lower(): values[-1] for key, values in parse_qs(parts.query).items()}
    mode = query.get("sslmode") or query.get("ssl-mode", "").lower().replace("_", "-") or "require"
    if mode not in _SSL_MODES:
        raise ServiceError(BAD_REQUEST, f"'url': sslmode must be one of {', '.join(_SSL_MODES)}")
    return {
        "name": name,
        "dialect": dialect,
        "host": parts.hostname or "",
        "port": port or _DEFAULT_PORTS[dialect],
        "database": unquote(parts.path.lstrip("/")),
        "user": unquote(parts.username or ""),
        "password": unquote(parts.password or ""),
        "tls": {"mode": _SSL_MODES[mode]},
    }


def _convert[S: msgspec.Struct](value: dict[str, Any], kind: type[S]) -> S:
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as exc:
        # msgspec names the field and what was expected, never the value given.
        raise ServiceError(BAD_REQUEST, f"invalid connection: {exc}") from None


def _json(value: msgspec.Struct | dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(value), status=status, content_type="application/json")


async def list_connections(http_request: web.Request) -> web.Response:
    uid = await owner(http_request)
    await _require_enabled(http_request.app)
    records = await user_connections(http_request.app, uid)
    return _json({"connections": [record.view() for record in records]})


async def create_connection(http_request: web.Request) -> web.Response:
    uid = await owner(http_request)
    await _require_enabled(http_request.app)
    body = await json_object(http_request)
    if "url" in body:
        extra = set(body) - {"name", "url"}
        if extra:
            raise ServiceError(BAD_REQUEST, f"give either 'url' or the separate fields, not both ({', '.join(sorted(extra))})")
        body = settings_from_url(body.get("name"), body["url"])
    settings = _convert(body, ConnectionSettings)
    del body
    app = http_request.app
    view = await request(app[keys.NATS_CLIENT], app[keys.SUBJECTS].query_connection("create"), ConnectionCreate(uid, settings), timeout=OPEN_TIMEOUT_S, reply=ConnectionView)
    return _json(view, 201)


async def get_connection(http_request: web.Request) -> web.Response:
    uid = await owner(http_request)
    await _require_enabled(http_request.app)
    app = http_request.app
    found = await request(
        app[keys.NATS_CLIENT], app[keys.SUBJECTS].session_connection("get"), ConnectionGet(ConnectionRef(uid, _connection_id(http_request))), timeout=STORE_TIMEOUT_S, reply=ConnectionFound
    )
    if found.record is None:
        raise ServiceError(NOT_FOUND, "no such connection")
    return _json(found.record.view())


async def patch_connection(http_request: web.Request) -> web.Response:
    uid = await owner(http_request)
    await _require_enabled(http_request.app)
    ref = ConnectionRef(uid, _connection_id(http_request))
    changes = _convert(await json_object(http_request), ConnectionChanges)
    app = http_request.app
    view = await request(app[keys.NATS_CLIENT], app[keys.SUBJECTS].query_connection("update"), ConnectionUpdate(ref, changes), timeout=OPEN_TIMEOUT_S, reply=ConnectionView)
    return _json(view)


async def delete_connection(http_request: web.Request) -> web.Response:
    uid = await owner(http_request)
    await _require_enabled(http_request.app)
    app = http_request.app
    ref = ConnectionRef(uid, _connection_id(http_request))
    deleted = await request(app[keys.NATS_CLIENT], app[keys.SUBJECTS].session_connection("delete"), ConnectionDelete(ref), timeout=STORE_TIMEOUT_S, reply=ConnectionDeleted)
    if not deleted.deleted:
        raise ServiceError(NOT_FOUND, "no such connection")
    return _json({"deleted": True})


async def test_connection(http_request: web.Request) -> web.Response:
    uid = await owner(http_request)
    await _require_enabled(http_request.app)
    app = http_request.app
    ref = ConnectionRef(uid, _connection_id(http_request))
    tested = await request(app[keys.NATS_CLIENT], app[keys.SUBJECTS].query_connection("test"), ConnectionTest(ref), timeout=OPEN_TIMEOUT_S, reply=ConnectionTested)
    return _json(tested)


def setup(app: web.Application) -> None:
    app[_ENABLED] = [0.0]  # until when the query service was last seen to hold CONNECTIONS_KEYS
    app.router.add_get("/api/connections", list_connections)
    app.router.add_post("/api/connections", create_connection)
    app.router.add_get("/api/connections/{id}", get_connection)
    app.router.add_patch("/api/connections/{id}", patch_connection)
    app.router.add_delete("/api/connections/{id}", delete_connection)
    app.router.add_post("/api/connections/{id}/test", test_connection)
