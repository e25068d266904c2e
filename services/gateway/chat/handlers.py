"""HTTP: POST /api/chat (one turn, streamed) and GET /api/quota, and the model client's cleanup context.

`chat()` tells a turn in named steps: authenticate, parse, load the context, admit (quota),
run, record. A turn is refused before any model call when the body is malformed (400), there is no
session (401), no model is configured (503) or the user is over quota (429). While it runs,
a client that goes away cancels it: the model request is closed and a running query is
cancelled in the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web

from services.gateway import keys
from services.gateway.access import caller, source_grant, visible_sources
from services.gateway.audit import query_audit
from services.gateway.auth.identity import caller_uid, identity
from services.gateway.chat import chat_request, examples, metrics, persist, prompt, tools
from services.gateway.chat.chat_request import ChatRequest
from services.gateway.chat.context import PromptContext
from services.gateway.chat.model import ModelClient
from services.gateway.chat.record import RecordingUIStream
from services.gateway.chat.turn import TurnStats, run_turn
from services.gateway.clients import Window
from services.gateway.config import GatewayConfig
from services.gateway.sources import DIALECTS, user_connections
from services.gateway.sse import HEADERS, client_outcome
from shared.contracts import ConnectionRecord, ConnectionRef, LimitResult
from shared.errors import BAD_REQUEST, UNAVAILABLE, ServiceError
from shared.logging import current_request_id

log = structlog.get_logger(__name__)

MODEL = web.AppKey("model", ModelClient)
CONTEXT = web.AppKey("chat_context", PromptContext)
NOT_CONFIGURED = (
    "no language model is configured: set LLM_BASE_URL and LLM_MODEL (and LLM_API_KEY), e.g. https://api.openai.com/v1 with gpt-4o-mini, "
    "https://generativelanguage.googleapis.com/v1beta/openai with gemini-2.5-flash, or a local Ollama at http://127.0.0.1:11434/v1"
)
QUOTA_EXCEEDED = "quota_exceeded"
DISCONNECT_POLL_S = 0.1


async def model_client(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: the model client and the prompt's context, when LLM_BASE_URL is set."""
    # httpx logs a line per model request at INFO; the turn's own line says what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    config = app[keys.CONFIG]
    if not config.llm_base_url:
        yield
        return
    client = ModelClient(config)
    app[MODEL] = client
    app[CONTEXT] = PromptContext(app[keys.QUERY], config.llm_schema_max_chars)
    yield
    await app[CONTEXT].close()
    await client.close()


def quota_windows(config: GatewayConfig) -> list[Window]:
    return [
        Window(name="minute", seconds=60, limit=config.chat_quota_per_minute),
        Window(name="hour", seconds=3600, limit=config.chat_quota_per_hour),
        Window(name="day", seconds=86400, limit=config.chat_quota_per_day),
    ]


def usage(result: LimitResult) -> dict[str, Any]:
    return {name: {"used": w.used, "limit": w.limit, "resets_in": w.resets_in} for name, w in result.windows.items()}


async def quota(request: web.Request) -> web.Response:
    """GET /api/quota: the caller's chat turns in each window, without counting one."""
    uid = await caller_uid(request)
    result = await request.app[keys.LIMITER].hit(f"quota:{uid}", quota_windows(request.app[keys.CONFIG]), consume=False)
    return web.json_response(usage(result))


async def _disconnected(alive: Callable[[], bool]) -> None:
    """Return once the client's connection is gone (aiohttp does not cancel handlers for it)."""
    while alive():
        await asyncio.sleep(DISCONNECT_POLL_S)


@dataclass
class Turn:
    """One admitted turn: its body, its stored history, what the model is given, and the quota's answer."""

    body: ChatRequest
    stored: persist.TurnHistory
    messages: list[dict[str, Any]]
    dropped: int
    limit: LimitResult
    session: dict[str, Any]
    """Who asks: their sources, roles and audit events (services/gateway/access.py)."""
    connections: dict[str, ConnectionRef]
    """The caller's own databases by name (services/gateway/sources.py)."""


async def chat(request: web.Request) -> web.StreamResponse:
    """POST /api/chat: one assistant turn as a UI message stream."""
    who = await identity(request)
    uid = who.uid
    model = configured_model(request.app)
    body = await parse(request)
    system, stored, connections = await load_context(request.app, uid, body, who.session)
    limit = await admit(request.app, uid)
    if not limit.allowed:
        return quota_refusal(limit)
    turns = chat_request.to_model_messages(stored.messages)
    kept, dropped = chat_request.fit_history(turns, request.app[keys.CONFIG].llm_history_max_chars)
    if (body.source or "") not in connections:  # examples are an operator source's; load_context has refused one this user may not use
        system += await examples.for_turn(request.app, source_grant(request.app[keys.CONFIG], who.session, body.source).source, stored.messages)
    turn = Turn(body, stored, [{"role": "system", "content": system}, *kept], dropped, limit, who.session, connections)
    return await run(request, model, turn)


def configured_model(app: web.Application) -> ModelClient:
    """The model client; 503 when no model is configured."""
    if MODEL not in app:
        raise ServiceError(UNAVAILABLE, NOT_CONFIGURED)
    return app[MODEL]


async def parse(request: web.Request) -> ChatRequest:
    """The posted body, typed; 400 naming what is wrong."""
    try:
        return chat_request.parse_request(await request.read())
    except chat_request.BodyError as exc:
        raise ServiceError(BAD_REQUEST, str(exc)) from None


async def load_context(app: web.Application, uid: str, body: ChatRequest, session: dict[str, Any]) -> tuple[str, persist.TurnHistory, dict[str, ConnectionRef]]:
    """The system prompt (listing only the caller's sources and own databases), the stored history, and the own databases by name.

    Both refuse before the quota counts the turn: an unknown source or one the caller may not
    use (the prompt is usually kept, so costs nothing) and a full conversation (a load).
    """
    config = app[keys.CONFIG]
    own = await own_connections(app, uid)
    refs = {record.name: ConnectionRef(uid, record.id) for record in own}
    dialects = {record.name: DIALECTS[record.dialect] for record in own}
    connection = refs.get(body.source or "")
    # The caller's own database is theirs to use (services/gateway/sources.py); an operator's source needs a grant.
    grant = source_grant(config, session, body.source) if connection is None else None
    system, stored = await asyncio.gather(
        app[CONTEXT].system_prompt(grant, lambda names: visible_sources(config, session, names), dialects, connection, body.source),
        persist.prepare(app[keys.HISTORY], uid, body, app[keys.CONFIG].llm_history_max_chars),
    )
    return system, stored, refs


async def own_connections(app: web.Application, uid: str) -> list[ConnectionRecord]:
    """The user's own databases, or none when the session service cannot say (the turn goes on with the operator's sources)."""
    try:
        return await user_connections(app, uid)
    except ServiceError as exc:
        log.warning("chat_connections_unavailable", error=exc.message)
        return []


async def admit(app: web.Application, uid: str) -> LimitResult:
    """Count the turn against the caller's quota (unless a window is full)."""
    return await app[keys.LIMITER].hit(f"quota:{uid}", quota_windows(app[keys.CONFIG]))


def quota_refusal(limit: LimitResult) -> web.Response:
    """429 with Retry-After and the caller's usage."""
    retry = max(1, limit.retry_after or 1)
    message = f"chat quota used up; try again in {retry} s"
    return web.json_response({"error": {"code": QUOTA_EXCEEDED, "message": message}, "usage": usage(limit)}, status=429, headers={"Retry-After": str(retry)})


async def run(request: web.Request, model: ModelClient, turn: Turn) -> web.StreamResponse:
    """Stream the turn to the client, then record it (partial answer, metrics, log line), however it ended."""
    app = request.app
    config = app[keys.CONFIG]
    response = web.StreamResponse(headers={**HEADERS, "X-Request-Id": current_request_id() or ""})
    await response.prepare(request)
    # A new assistant message every time: on regenerate, useChat has already removed the old one.
    ui = RecordingUIStream(response, f"msg_{uuid.uuid4().hex}", request, config.client_write_timeout_s, lambda message: persist.save(app[keys.HISTORY], turn.stored, message))

    def alive() -> bool:
        return not (request.transport is None or request.transport.is_closing())

    session = turn.session
    ctx = tools.ToolContext(
        app[keys.NATS_CLIENT],
        app[keys.SUBJECTS],
        app[keys.QUERY],
        ui,
        turn.body.source,
        config.stream_idle_s,
        alive,
        grant_for=lambda source: source_grant(config, session, source),
        caller_for=lambda grant: caller(session, grant),
        audit=lambda source, sql: query_audit(app, session, source, sql, conversation_id=turn.body.id, model=model.model, turn=ui.message_id),
        search_max_chars=config.llm_schema_search_max_chars,
        uid=turn.stored.uid,
        recent=app[keys.RECENT],
        connections=turn.connections,
        tools=prompt.tools_for(list(turn.connections)),
    )
    stats = TurnStats()
    started = time.monotonic()
    try:
        await stream_turn(run_turn(model, ui, ctx, turn.messages, config.llm_max_steps, stats), alive, ui, model, stats)
    finally:
        await record(app, model, turn, ui, stats, time.monotonic() - started)
    return response


async def stream_turn(steps: Coroutine[Any, Any, None], alive: Callable[[], bool], ui: RecordingUIStream, model: ModelClient, stats: TurnStats) -> None:
    """Run the turn's steps until they end or the client goes away (which cancels them); `stats.outcome` says which."""
    turn = asyncio.create_task(steps)
    gone = asyncio.create_task(_disconnected(alive))
    try:
        await asyncio.wait({turn, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not turn.done():
            turn.cancel("client_gone")
        await settle(turn, ui, model, stats)
    except asyncio.CancelledError:  # cut off: the shutdown grace ran out
        turn.cancel()
        stats.outcome = "cancelled"
        raise
    finally:
        gone.cancel()
        with contextlib.suppress(BaseException):
            await turn


async def settle(turn: asyncio.Task[None], ui: RecordingUIStream, model: ModelClient, stats: TurnStats) -> None:
    """Await the ended (or cancelled) turn and name its outcome; a bug ends the stream with an error part, not a 500."""
    try:
        await turn
    except ConnectionResetError as exc:  # the client went away, or stopped reading (ClientStalled)
        stats.outcome = client_outcome(exc)
    except Exception:  # a bug: the stream is under way, so it ends with an error part rather than a 500
        log.exception("chat_turn_failed")
        stats.outcome = "internal"
        with contextlib.suppress(ConnectionResetError):
            await ui.error("internal error; see the gateway log")
            await ui.finish({"model": model.model, "usage": {"inputTokens": stats.input_tokens, "outputTokens": stats.output_tokens}, "steps": stats.steps})
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        stats.outcome = "client_gone"


async def record(app: web.Application, model: ModelClient, turn: Turn, ui: RecordingUIStream, stats: TurnStats, elapsed: float) -> None:
    """Keep a stopped turn's partial answer, and write the turn's metrics and its one log line."""
    if not ui.saved and ui.builder.started:
        ui.saved = True
        with contextlib.suppress(Exception):
            await asyncio.shield(persist.save(app[keys.HISTORY], turn.stored, ui.builder.message()))
    metrics.TURN_SECONDS.observe(elapsed)
    log.info(
        "chat_turn",
        model=model.model,
        steps=stats.steps,
        tool_calls=stats.tool_calls,
        input_tokens=stats.input_tokens,
        output_tokens=stats.output_tokens,
        outcome=stats.outcome,
        history_turns_dropped=turn.dropped,
        history_messages=turn.stored.stored,
        history_partial=turn.stored.partial,
        quota_local=turn.limit.local,
        source=turn.body.source,
        duration_ms=round(elapsed * 1000, 1),
    )
