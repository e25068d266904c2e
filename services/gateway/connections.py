"""`/api/connections`: each user's own databases (docs/connections.md).

Creating, changing and testing go to the query service (the only one that may see a
password in the clear, and that holds CONNECTIONS_KEYS); listing, reading and deleting go to
the session service, which stores the records and never sees a password unsealed. The
gateway forwards a password once and keeps nothing of it (services/gateway/clients.py,
ConnectionsClient).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import msgspec
from aiohttp import web

from services.gateway import keys
from services.gateway.audit import record_session_event
from services.gateway.auth.identity import Identity, identity
from services.gateway.clients import ConnectionsClient
from services.gateway.handlers import json_object
from shared.contracts import CONNECTION_ID_PATTERN, AuditConnection, ConnectionChanges, ConnectionRef, ConnectionSettings
from shared.errors import BAD_REQUEST, CONNECTIONS_OFF, NOT_FOUND, ServiceError
from shared.users import signed_in_user

_ID = re.compile(CONNECTION_ID_PATTERN)
_SCHEMES = {"postgresql": "postgresql", "postgres": "postgresql", "mysql": "mysql", "mariadb": "mysql"}
_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}
_SSL_MODES = {"disable": "disable", "allow": "require", "prefer": "require", "require": "require", "verify-ca": "verify-full", "verify-full": "verify-full"}


async def _caller(http_request: web.Request) -> tuple[ConnectionsClient, str]:
    """The client and the signed-in user's id (401 when nobody); 503 naming CONNECTIONS_KEYS while the feature is off."""
    client, who = await _caller_identity(http_request)
    return client, who.uid


async def _caller_identity(http_request: web.Request) -> tuple[ConnectionsClient, Identity]:
    who = await identity(http_request)
    who.uid  # noqa: B018 - 401 for a session without a user id, before anything else
    client = http_request.app[keys.CONNECTIONS]
    if not await client.enabled():
        raise ServiceError(CONNECTIONS_OFF, "users' own database connections are off: set CONNECTIONS_KEYS on the query service (docs/connections.md)")
    return client, who


def _ref(http_request: web.Request, uid: str) -> ConnectionRef:
    value = http_request.match_info["id"]
    if not _ID.match(value):
        raise ServiceError(NOT_FOUND, "no such connection")
    return ConnectionRef(uid, value)


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
    client, uid = await _caller(http_request)
    return _json({"connections": [record.view() for record in await client.list(uid)]})


async def create_connection(http_request: web.Request) -> web.Response:
    client, who = await _caller_identity(http_request)
    body = await json_object(http_request)
    if "url" in body:
        extra = set(body) - {"name", "url"}
        if extra:
            raise ServiceError(BAD_REQUEST, f"give either 'url' or the separate fields, not both ({', '.join(sorted(extra))})")
        body = settings_from_url(body.get("name"), body["url"])
    settings = _convert(body, ConnectionSettings)
    del body
    created = await client.create(who.uid, settings)
    _audit(http_request, who, "create", created.id, created.name)
    return _json(created, 201)


async def get_connection(http_request: web.Request) -> web.Response:
    client, uid = await _caller(http_request)
    record = await client.get(_ref(http_request, uid))
    if record is None:
        raise ServiceError(NOT_FOUND, "no such connection")
    return _json(record.view())


async def patch_connection(http_request: web.Request) -> web.Response:
    client, uid = await _caller(http_request)
    ref = _ref(http_request, uid)
    changes = _convert(await json_object(http_request), ConnectionChanges)
    return _json(await client.update(ref, changes))


async def delete_connection(http_request: web.Request) -> web.Response:
    client, who = await _caller_identity(http_request)
    ref = _ref(http_request, who.uid)
    record = await client.get(ref)  # for the audit trail's name
    if record is None or not await client.delete(ref):
        raise ServiceError(NOT_FOUND, "no such connection")
    _audit(http_request, who, "delete", record.id, record.name)
    return _json({"deleted": True})


def _audit(http_request: web.Request, who: Identity, action: str, connection_id: str, name: str) -> None:
    """One audit event per connection created or deleted (docs/access.md, the audit trail)."""
    record_session_event(http_request.app, AuditConnection, signed_in_user(who.session), action=action, connection_id=connection_id, source=name)


async def test_connection(http_request: web.Request) -> web.Response:
    client, uid = await _caller(http_request)
    return _json(await client.test(_ref(http_request, uid)))
