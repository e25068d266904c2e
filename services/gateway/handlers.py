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
from services.gateway.access import caller, is_admin, source_grant, unknown_source
from services.gateway.audit import AUDIT, AuditSignIn, AuditSignOut, query_audit, record_session_event
from services.gateway.auth.identity import current_session, identity
from services.gateway.auth.limit import check_login_rate
from services.gateway.auth.tokens import MAX_TOKEN_CHARS, check_policy, user_from_claims
from services.gateway.auth.web import verifier
from services.gateway.config import GatewayConfig
from services.gateway.errors import error_response
from services.gateway.jsonable import jsonable
from services.gateway.recent import remember
from services.gateway.relay import QueryResult, relay
from services.gateway.sources import user_source
from services.gateway.sse import HEADERS, ToolStream, client_outcome
from shared.access import MAX_GROUPS, clean_groups
from shared.errors import BAD_REQUEST, BUSY, UNKNOWN_SOURCE, ServiceError
from shared.limits import MAX_SQL_CHARS
from shared.logging import current_request_id
from shared.stream import StreamConsumer
from shared.users import signed_in_user, user_id

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


def public_view(session: dict[str, Any], config: GatewayConfig) -> dict[str, Any]:
    """What /api/me shows; values JSON cannot carry (bytes, ext types) in their documented form.
    `admin`: may read the audit trail (ADMIN_EMAILS, ADMIN_GROUP)."""
    user = signed_in_user(session)
    if isinstance(user, str):  # a legacy session whose user is a plain id
        user = {"uid": user, "email": None, "name": None, "picture": None, "verified": False}
    return jsonable({"user": user, "conversation_id": session.get("conversation_id"), "admin": is_admin(config, session)})


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
    groups = body.get("groups", [])
    if not isinstance(groups, list) or not all(isinstance(g, str) and 0 < len(g) <= 256 for g in groups) or len(groups) > MAX_GROUPS:
        raise ServiceError(BAD_REQUEST, f"'groups' must be a list of at most {MAX_GROUPS} group names (strings of 1-256 characters)")
    user = {"uid": uid, "email": email, "name": name, "picture": picture, "verified": True}
    if groups:
        user["groups"] = clean_groups(groups)
    return await _open_session(request, user, method="dev")


async def _token_login(request: web.Request) -> web.Response:
    await check_login_rate(request)
    body = await json_object(request)
    token = text_field(body, "idToken", required=True, max_chars=MAX_TOKEN_CHARS)
    assert token is not None
    claims = await verifier(request).verify(token)
    check_policy(request.app[keys.CONFIG], claims)
    return await _open_session(request, user_from_claims(claims, request.app[keys.CONFIG].groups_claim), method="id_token")


async def _open_session(request: web.Request, user: dict[str, Any], *, method: str) -> web.Response:
    data = {"_permanent": True, "user": user, "conversation_id": str(uuid.uuid4())}
    cookie = request.app[keys.COOKIE]
    # A login always issues a new sid and drops the old one (no session fixation).
    sid = await request.app[keys.SESSIONS].create(data, replace_sid=cookie.sid(request))
    response = web.json_response(public_view(data, request.app[keys.CONFIG]))
    cookie.set(response, sid)
    log.info("login", uid=user["uid"], method=method)
    record_session_event(request.app, AuditSignIn, user, method=method)
    return response


async def logout(request: web.Request) -> web.Response:
    cookie = request.app[keys.COOKIE]
    sid = cookie.sid(request)
    if sid is not None:
        session = await request.app[keys.SESSIONS].get(sid)
        await request.app[keys.SESSIONS].delete(sid)
        if session is not None and signed_in_user(session) is not None:
            record_session_event(request.app, AuditSignOut, signed_in_user(session))
    response = web.json_response({"ok": True})
    cookie.expire(response)
    return response


async def me(request: web.Request) -> web.Response:
    """The signed-in user; for a bearer request, from the token's claims."""
    who = await identity(request)
    return web.Response(body=orjson.dumps(public_view(who.session, request.app[keys.CONFIG])), content_type="application/json", charset="utf-8")


async def query(request: web.Request) -> web.StreamResponse:
    """Run execute_query and stream the result as an AI SDK UI message stream; one audit event per call, and an accepted query joins the caller's recent queries."""
    _, session = await current_session(request)
    uid = user_id(session)
    body = await json_object(request)
    sql = text_field(body, "sql", required=True, max_chars=MAX_SQL_CHARS)
    assert sql is not None
    if not sql.strip():
        raise ServiceError(BAD_REQUEST, "'sql' is empty")
    source = text_field(body, "source", required=False, max_chars=128)

    app = request.app
    config = app[keys.CONFIG]
    audit = query_audit(app, session, source, sql)
    consumer = StreamConsumer(app[keys.NATS_CLIENT], app[keys.SUBJECTS], idle_timeout_s=config.stream_idle_s)
    start_error: ServiceError | None = None
    try:
        # The caller's own database (services/gateway/sources.py) is theirs to use; an operator's source needs a grant.
        connection = await user_source(app, uid, source)
        grant = source_grant(config, session, source) if connection is None else None
        target = grant.source if grant is not None else source
        audit.source, audit.role = target, grant.role if grant is not None else None
        await app[AUDIT].check_writable()
    except ServiceError as exc:  # 404 for a source this user may not use; 503 when AUDIT_REQUIRED and the trail is down
        audit.finish(exc.code, QueryResult(), exc)
        raise
    try:
        if grant is None:
            await consumer.start(sql, None, connection=connection)
        else:
            await consumer.start(sql, grant.source, caller=caller(session, grant))
    except ServiceError as exc:
        if exc.code == UNKNOWN_SOURCE:
            exc = unknown_source(target)  # the query service's message lists every source
        if exc.code in (BUSY, UNKNOWN_SOURCE):
            audit.finish(exc.code, QueryResult(), exc)
            raise exc from None  # before the stream's headers: a real 404, or 503 with Retry-After
        start_error = exc  # any other refusal is an error part of the stream, as before
    if start_error is None and uid is not None:
        await remember(app[keys.RECENT], uid, target, sql)
    response = web.StreamResponse(headers={**HEADERS, "X-Request-Id": current_request_id() or ""})
    stream = ToolStream(response, f"msg_{uuid.uuid4().hex}", f"call_{uuid.uuid4().hex}", request=request, write_timeout_s=config.client_write_timeout_s)
    outcome, result, error = "ok", QueryResult(), start_error
    metrics.STREAMS_IN_FLIGHT.inc()
    try:
        await response.prepare(request)
        await stream.begin(sql)
        try:
            if start_error is not None:
                raise start_error
            await relay(consumer, stream, result, alive=lambda: not (request.transport is None or request.transport.is_closing()))
        except ServiceError as exc:
            outcome, error = exc.code, exc
            await stream.error(exc.message)
        await stream.end()
    except ConnectionError as exc:  # the client went away, or stopped reading (ClientStalled)
        # aiohttp raises a plain ConnectionError("Connection lost") to a write that waited for the
        # client when the client hangs up; any other ConnectionError is not the client's doing.
        if not isinstance(exc, ConnectionResetError) and request.transport is not None and not request.transport.is_closing():
            raise
        outcome = client_outcome(exc)
    except asyncio.CancelledError:  # cut off: the shutdown grace ran out
        outcome = "cancelled"
        raise
    finally:
        await consumer.close()
        metrics.STREAMS_IN_FLIGHT.dec()
        audit.finish(outcome, result, error)
        log.info("query_stream", outcome=outcome, rows=result.row_count, source=audit.source, role=audit.role, duration_ms=round((time.monotonic() - audit.started) * 1000, 1))
    return response
