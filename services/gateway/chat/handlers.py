"""HTTP: POST /api/chat (one turn, streamed) and GET /api/quota; `setup(app)` adds both and the model client.

A turn is refused before any model call when the body is malformed (400), there is no
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
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog
from aiohttp import web

from services.gateway import keys
from services.gateway.chat import history, metrics, persist, prompt, tools
from services.gateway.chat.context import PromptContext
from services.gateway.chat.model import ModelClient
from services.gateway.chat.record import RecordingUIStream
from services.gateway.chat.turn import TurnStats, run_turn
from services.gateway.config import GatewayConfig
from services.gateway.conversations import HISTORY, caller_uid
from services.gateway.limits import LimitResult, Window
from services.gateway.sources import DIALECTS, user_connections
from services.gateway.sse import HEADERS, client_outcome
from shared.contracts import ConnectionRecord, ConnectionRef
from shared.errors import BAD_REQUEST, UNAVAILABLE, ServiceError
from shared.logging import current_request_id

log = structlog.get_logger(__name__)

MODEL = web.AppKey("model", ModelClient)
CONTEXT = web.AppKey("chat_context", PromptContext)
NOT_CONFIGURED = "no language model is configured: set LLM_BASE_URL and LLM_MODEL"
QUOTA_EXCEEDED = "quota_exceeded"
DISCONNECT_POLL_S = 0.1


def setup(app: web.Application) -> None:
    """Routes of the assistant, and the model client when LLM_BASE_URL is set."""
    app.router.add_post("/api/chat", chat)
    app.router.add_get("/api/quota", quota)
    app.cleanup_ctx.append(model_client)
    # httpx logs a line per model request at INFO; the turn's own line says what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)


async def model_client(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    if not config.llm_base_url:
        yield
        return
    client = ModelClient(config)
    app[MODEL] = client
    app[CONTEXT] = PromptContext(app[keys.NATS_CLIENT], app[keys.SUBJECTS], config.llm_schema_max_chars)
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


async def own_connections(app: web.Application, uid: str) -> list[ConnectionRecord]:
    """The user's own connections, or none when the session service cannot say (the turn goes on with the operator's sources)."""
    try:
        return await user_connections(app, uid)
    except ServiceError as exc:
        log.warning("chat_connections_unavailable", error=exc.message)
        return []


async def _disconnected(alive: Callable[[], bool]) -> None:
    """Return once the client's connection is gone (aiohttp does not cancel handlers for it)."""
    while alive():
        await asyncio.sleep(DISCONNECT_POLL_S)


async def chat(request: web.Request) -> web.StreamResponse:
    """POST /api/chat: one assistant turn as a UI message stream."""
    uid = await caller_uid(request)
    app = request.app
    config = app[keys.CONFIG]
    if MODEL not in app:
        raise ServiceError(UNAVAILABLE, NOT_CONFIGURED)
    try:
        body = history.parse_request(await request.read())
    except history.BodyError as exc:
        raise ServiceError(BAD_REQUEST, str(exc)) from None
    # Refusals that must come before the quota counts the turn, looked up together: an unknown
    # source (the prompt is usually kept, so costs nothing) and a full conversation (a load).
    own = await own_connections(app, uid)
    refs = {record.name: ConnectionRef(uid, record.id) for record in own}
    own_dialects = {record.name: DIALECTS[record.dialect] for record in own}
    system, stored = await asyncio.gather(
        app[CONTEXT].system_prompt(body.source, own_dialects, refs.get(body.source or "")),
        persist.prepare(app[HISTORY], uid, body, config.llm_history_max_chars),
    )
    limit = await app[keys.LIMITER].hit(f"quota:{uid}", quota_windows(config))
    if not limit.allowed:
        retry = max(1, limit.retry_after or 1)
        message = f"chat quota used up; try again in {retry} s"
        return web.json_response({"error": {"code": QUOTA_EXCEEDED, "message": message}, "usage": usage(limit)}, status=429, headers={"Retry-After": str(retry)})
    turns = history.to_model_messages(stored.messages)
    kept, dropped = history.fit_history(turns, config.llm_history_max_chars)
    messages = [{"role": "system", "content": system}, *kept]

    model = app[MODEL]
    response = web.StreamResponse(headers={**HEADERS, "X-Request-Id": current_request_id() or ""})
    await response.prepare(request)
    # A new assistant message every time: on regenerate, useChat has already removed the old one.
    ui = RecordingUIStream(response, f"msg_{uuid.uuid4().hex}", request, lambda message: persist.save(app[HISTORY], stored, message))

    def alive() -> bool:
        return not (request.transport is None or request.transport.is_closing())

    ctx = tools.ToolContext(app[keys.NATS_CLIENT], app[keys.SUBJECTS], ui, body.source, config.stream_idle_s, alive, refs, prompt.tools_for(list(refs)))
    stats = TurnStats()
    started = time.monotonic()
    turn = asyncio.create_task(run_turn(model, ui, ctx, messages, config.llm_max_steps, stats))
    gone = asyncio.create_task(_disconnected(alive))
    try:
        await asyncio.wait({turn, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not turn.done():
            turn.cancel("client_gone")
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
    except asyncio.CancelledError:  # cut off: the shutdown grace ran out
        turn.cancel()
        stats.outcome = "cancelled"
        raise
    finally:
        gone.cancel()
        with contextlib.suppress(BaseException):
            await turn
        if not ui.saved and ui.builder.started:  # a stopped turn keeps its partial answer
            ui.saved = True
            with contextlib.suppress(Exception):
                await asyncio.shield(persist.save(app[HISTORY], stored, ui.builder.message()))
        elapsed = time.monotonic() - started
        metrics.TURN_SECONDS.observe(elapsed)
        log.info(
            "chat_turn",
            model=model.model,
            steps=stats.steps,
            tool_calls=stats.tool_calls,
            input_tokens=stats.input_tokens,
            output_tokens=stats.output_tokens,
            outcome=stats.outcome,
            history_turns_dropped=dropped,
            history_messages=stored.stored,
            history_partial=stored.partial,
            quota_local=limit.local,
            source=body.source,
            duration_ms=round(elapsed * 1000, 1),
        )
    return response
