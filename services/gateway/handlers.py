"""HTTP handlers: login (ID token or dev), logout, the current user, and the execute_query stream."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from typing import Any

import orjson
import structlog
from aiohttp import web

from services.gateway import keys, metrics
from services.gateway.auth.identity import identity
from services.gateway.auth.limit import check_login_rate
from services.gateway.auth.tokens import MAX_TOKEN_CHARS, check_policy, user_from_claims
from services.gateway.auth.web import verifier
from services.gateway.errors import error_response
from services.gateway.jsonable import jsonable
from services.gateway.relay import QueryResult, relay
from services.gateway.sse import HEADERS, ToolStream, client_outcome
from shared.errors import BAD_REQUEST, BUSY, ServiceError
from shared.limits import MAX_SQL_CHARS
from shared.logging import current_request_id
from shared.stream import StreamConsumer
from shared.users import signed_in_user

log = structlog.get_logger(__name__)

MAX_FIELD_CHARS = 512


async def json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 naming what is wrong."""
    body = await request.read()
    if not body:
        raise ServiceError(BAD_REQUEST, "the request body must be a JSON object")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ServiceError(BAD_REQUEST, f"the request body is not valid JSON: {exc.msg} at position {exc.pos}") from None
    if not isinstance(value, dict):
        raise ServiceError(BAD_REQUEST, "the request body must be a JSON object")
    return value


def text_field(body: dict[str, Any], name: str, *, required: bool, max_chars: int = MAX_FIELD_CHARS) -> str | None:
    value = body.get(name)
    if value is None or value == "":
        if required:
            raise ServiceError(BAD_REQUEST, f"'{name}' is required")
        return None
    if not isinstance(value, str):
        raise ServiceError(BAD_REQUEST, f"'{name}' must be a string")
    if len(value) > max_chars:
        raise ServiceError(BAD_REQUEST, f"'{name}' is longer than {max_chars} characters")
    return value


def public_view(session: dict[str, Any]) -> dict[str, Any]:
    """What /api/me shows; values JSON cannot carry (bytes, ext types) in their documented form."""
    user = signed_in_user(session)
    if isinstance(user, str):  # a legacy session whose user is a plain id
        user = {"uid": user, "email": None, "name": None, "picture": None, "verified": False}
    return jsonable({"user": user, "conversation_id": session.get("conversation_id")})


async def login(request: web.Request) -> web.Response:
    """Open a session: from a verified ID token (AUTH_MODE oidc/firebase), or from an email in dev mode."""
    config = request.app[keys.CONFIG]
    if config.token_login:
        return await _token_login(request)
    if config.auth_mode != "dev":
        return error_response("forbidden", "sign-in is disabled (AUTH_MODE is 'off')")
    body = await json_object(request)
    email = text_field(body, "email", required=True)
    assert email is not None
    if "@" not in email:
        raise ServiceError(BAD_REQUEST, "'email' must be an email address")
    name = text_field(body, "name", required=True)
    uid = text_field(body, "uid", required=False) or "dev-" + hashlib.sha256(email.lower().encode()).hexdigest()[:24]
    picture = text_field(body, "picture", required=False, max_chars=2048)
    return await _open_session(request, {"uid": uid, "email": email, "name": name, "picture": picture, "verified": True}, method="dev")


async def _token_login(request: web.Request) -> web.Response:
    await check_login_rate(request)
    body = await json_object(request)
    token = text_field(body, "idToken", required=True, max_chars=MAX_TOKEN_CHARS)
    assert token is not None
    claims = await verifier(request).verify(token)
    check_policy(request.app[keys.CONFIG], claims)
    return await _open_session(request, user_from_claims(claims), method="id_token")


async def _open_session(request: web.Request, user: dict[str, Any], *, method: str) -> web.Response:
    data = {"_permanent": True, "user": user, "conversation_id": str(uuid.uuid4())}
    cookie = request.app[keys.COOKIE]
    # A login always issues a new sid and drops the old one (no session fixation).
    sid = await request.app[keys.SESSIONS].create(data, replace_sid=cookie.sid(request))
    response = web.json_response(public_view(data))
    cookie.set(response, sid)
    log.info("login", uid=user["uid"], method=method)
    return response


async def logout(request: web.Request) -> web.Response:
    cookie = request.app[keys.COOKIE]
    sid = cookie.sid(request)
    if sid is not None:
        await request.app[keys.SESSIONS].delete(sid)
    response = web.json_response({"ok": True})
    cookie.expire(response)
    return response


async def me(request: web.Request) -> web.Response:
    """The signed-in user; for a bearer request, from the token's claims."""
    who = await identity(request)
    return web.Response(body=orjson.dumps(public_view(who.session)), content_type="application/json", charset="utf-8")


async def query(request: web.Request) -> web.StreamResponse:
    """Run execute_query and stream the result as an AI SDK UI message stream."""
    uid = (await identity(request)).uid
    body = await json_object(request)
    sql = text_field(body, "sql", required=True, max_chars=MAX_SQL_CHARS)
    assert sql is not None
    if not sql.strip():
        raise ServiceError(BAD_REQUEST, "'sql' is empty")
    source = text_field(body, "source", required=False, max_chars=128)

    config = request.app[keys.CONFIG]
    consumer = StreamConsumer(request.app[keys.NATS_CLIENT], request.app[keys.SUBJECTS], idle_timeout_s=config.stream_idle_s)
    start_error: ServiceError | None = None
    try:
        await consumer.start(sql, source, user=uid)
    except ServiceError as exc:
        if exc.code == BUSY:
            raise  # before the stream's headers: a real 503 with Retry-After
        start_error = exc  # any other refusal is an error part of the stream, as before
    response = web.StreamResponse(headers={**HEADERS, "X-Request-Id": current_request_id() or ""})
    stream = ToolStream(response, f"msg_{uuid.uuid4().hex}", f"call_{uuid.uuid4().hex}", request=request, write_timeout_s=config.client_write_timeout_s)
    started = time.monotonic()
    outcome, result = "ok", QueryResult()
    metrics.STREAMS_IN_FLIGHT.inc()
    try:
        await response.prepare(request)
        await stream.begin(sql)
        try:
            if start_error is not None:
                raise start_error
            await relay(consumer, stream, result, alive=lambda: not (request.transport is None or request.transport.is_closing()))
        except ServiceError as exc:
            outcome = exc.code
            await stream.error(exc.message)
        await stream.end()
    except ConnectionResetError as exc:  # the client went away, or stopped reading (ClientStalled)
        outcome = client_outcome(exc)
    except asyncio.CancelledError:  # cut off: the shutdown grace ran out
        outcome = "cancelled"
        raise
    finally:
        await consumer.close()
        metrics.STREAMS_IN_FLIGHT.dec()
        log.info("query_stream", outcome=outcome, rows=result.row_count, source=source, duration_ms=round((time.monotonic() - started) * 1000, 1))
    return response
