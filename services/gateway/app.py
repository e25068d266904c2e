"""The gateway: the only public HTTP surface. Built by `create_app(config)`, run by `main()`."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from services.gateway import keys, metrics, webapp
from services.gateway.access import log_unreachable_sources
from services.gateway.audit import audit_trail
from services.gateway.auth.web import csrf, token_verifier
from services.gateway.chat import handlers as chat
from services.gateway.clients import ConnectionsClient, ExamplesClient, HistoryClient, Limiter, QueryClient, RecentClient, SessionClient
from services.gateway.config import GatewayConfig
from services.gateway.errors import error_response, from_service_error
from services.gateway.routes import setup_routes
from services.gateway.sessions import SessionCookie
from services.gateway.sse import client_outcome
from shared.bus import close, connect
from shared.contracts import Subjects
from shared.errors import BAD_REQUEST, INTERNAL, NOT_FOUND, ServiceError
from shared.logging import bind_request, setup_logging
from shared.runtime import stop_event

log = structlog.get_logger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
_CUT_OFF_S = 1.0
_HTTP_CODES = {400: BAD_REQUEST, 404: NOT_FOUND, 405: "method_not_allowed", 413: "too_large", 415: "unsupported_media_type", 431: "headers_too_large"}
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_JSON_CHARSETS = frozenset({"", "utf-8", "utf8"})
CLIENT_GONE_STATUS = 499
"""Recorded (metrics, log) for a request whose client left or stopped reading before the answer was sent."""


def unsupported_body(request: web.Request) -> web.Response | None:
    """415 for a request whose body is not JSON: every endpoint takes only JSON (an empty body is no body)."""
    if request.method not in _BODY_METHODS or request.match_info.http_exception is not None or not request.body_exists:
        return None
    charset = (request.charset or "").lower()
    if request.content_type == "application/json" and charset in _JSON_CHARSETS:
        return None
    given = request.headers.get("Content-Type", "")
    wanted = "Content-Type: application/json (charset utf-8, if any)"
    return error_response("unsupported_media_type", f"the request body must be JSON, sent with {wanted}; got {given[:100]!r}" if given else f"the request body must be JSON, sent with {wanted}", 415)


@web.middleware
async def observe(request: web.Request, handler: web.Handler) -> web.StreamResponse:
    """Request id, JSON errors for every failure, one canonical log line and metrics per request."""
    given = request.headers.get("X-Request-Id", "")
    rid = bind_request(given if _REQUEST_ID.match(given) else None, method=request.method, path=request.path)
    started = time.monotonic()
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    lifecycle = request.app[keys.LIFECYCLE]
    probe = route in _PROBES
    if not probe:
        lifecycle.enter()
    outcome = "ok"
    try:
        response = unsupported_body(request) or await handler(request)
    except ConnectionResetError as exc:  # the client left or stopped reading: not our failure, and no answer can reach it
        outcome = client_outcome(exc)
        response = web.Response(status=CLIENT_GONE_STATUS)
    except ServiceError as exc:
        response = from_service_error(exc)
    except web.RequestPayloadError as exc:  # a body aiohttp could not decode (bad chunking, content encoding)
        response = error_response(BAD_REQUEST, f"the request body could not be read: {_last_line(exc)}", 400)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error_response(_HTTP_CODES.get(exc.status, "http_error"), exc.reason, exc.status)
    except Exception:
        log.exception("request_failed")
        response = error_response(INTERNAL, "internal error; see the gateway log")
    finally:
        if not probe:
            lifecycle.leave()
    if not response.prepared:
        response.headers["X-Request-Id"] = rid
    elapsed = time.monotonic() - started
    metrics.observe_request(route, response.status, elapsed)
    if route not in ("/healthz", "/metrics"):
        log.info("request", status=response.status, duration_ms=round(elapsed * 1000, 2), **({"outcome": outcome} if outcome != "ok" else {}))
    return response


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1][:200] if lines else type(exc).__name__


def _client_error_text(exc: BaseException | None, message: str | None) -> str:
    """A one-line message for a request aiohttp could not parse, without echoing what the client sent."""
    if isinstance(exc, LineTooLong):
        return "the request line or a header is too long (at most 8190 bytes each)"
    if isinstance(exc, BadHttpMethod):
        return "not an HTTP request"
    text = (message or (str(exc) if exc else "") or "bad request").strip().splitlines()[0]
    return text.split(": b'", 1)[0].rstrip(":")[:200] or "bad request"


class JsonErrorHandler(RequestHandler):
    """aiohttp's connection protocol, answering the errors it raises itself (a malformed request,
    oversized headers) with our JSON error shape instead of plain text, and logging them as JSON."""

    __slots__ = ()

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:  # the answer has begun: only closing the connection is left
            raise ConnectionError("the response was already started, cannot send the error")
        if status >= 500:
            log.error("request_failed", status=status, error=f"{type(exc).__name__}: {exc}" if exc else message, exc_info=exc)
            text = "internal error; see the gateway log" if status == 500 else (message or "the request took too long")
        else:
            text = _client_error_text(exc, message)
            log.info("request_rejected", status=status, error=text, error_type=type(exc).__name__ if exc else None)
        code = _HTTP_CODES.get(status, INTERNAL if status == 500 else "timeout" if status == 504 else "http_error")
        if isinstance(exc, LineTooLong):
            code = "headers_too_large"
        response = error_response(code, text[:300], status)
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's own error log (e.g. a body left unread that fails to decode), as JSON."""
        exc = kw.get("exc_info")
        what = (args[0] % args[1:]) if args and isinstance(args[0], str) else "connection error"
        if isinstance(exc, (web.RequestPayloadError, HttpProcessingError, ConnectionError)):
            log.info("connection_closed", reason=what, error=_last_line(exc))  # the client's doing: no traceback
        else:
            log.error("connection_failed", reason=what, exc_info=exc if isinstance(exc, BaseException) else True)


class _JsonErrorServer(web.Server):
    """The low-level server of the gateway: the same as aiohttp's, with JsonErrorHandler per connection."""

    def __call__(self) -> RequestHandler:
        return JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """An AppRunner whose connections answer aiohttp's own 4xx/5xx errors in our JSON shape."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return _JsonErrorServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **server._kwargs,
        )


def create_app(config: GatewayConfig) -> web.Application:
    app = web.Application(middlewares=[observe, csrf], client_max_size=1024 * 1024)
    app[keys.CONFIG] = config
    app[keys.SUBJECTS] = Subjects(config.subject_prefix)
    app[keys.COOKIE] = SessionCookie(config)
    app[keys.LIFECYCLE] = keys.Lifecycle()
    app.cleanup_ctx.append(nats_connection)
    app.cleanup_ctx.append(audit_trail)
    app.cleanup_ctx.append(log_unreachable_sources)
    if config.token_login:
        app.cleanup_ctx.append(token_verifier)

    app.cleanup_ctx.append(chat.model_client)
    webapp.setup(app)
    setup_routes(app)
    return app


async def nats_connection(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    nc = await connect(config.nats_url, "gateway", credentials=config.nats_credentials)
    app[keys.NATS_CLIENT] = nc
    app[keys.SESSIONS] = SessionClient(nc, app[keys.SUBJECTS], config.session_timeout_s)
    app[keys.LIMITER] = Limiter(nc, app[keys.SUBJECTS], config.session_timeout_s)
    app[keys.HISTORY] = HistoryClient(nc, app[keys.SUBJECTS], config.session_timeout_s)
    app[keys.QUERY] = QueryClient(nc, app[keys.SUBJECTS])
    app[keys.EXAMPLES] = ExamplesClient(nc, app[keys.SUBJECTS], config.session_timeout_s)
    app[keys.RECENT] = RecentClient(nc, app[keys.SUBJECTS], config.session_timeout_s)
    app[keys.CONNECTIONS] = ConnectionsClient(nc, app[keys.SUBJECTS])
    yield
    await close(nc)


async def main() -> None:
    config = GatewayConfig.from_env()
    setup_logging("gateway", config.log_level, config.log_flush_ms)
    stop = stop_event()
    app = create_app(config)
    # Shutdown waits for in-flight requests itself (below); aiohttp's own wait only cuts off the rest.
    runner = GatewayRunner(app, access_log=None, shutdown_timeout=_CUT_OFF_S)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    if config.auth_mode == "dev":
        log.warning("dev_login_enabled", message="AUTH_MODE=dev: anyone can sign in as any email address; never use it in production")
    log.info("service_ready", host=config.host, port=config.port, auth_mode=config.auth_mode, subject_prefix=config.subject_prefix)
    await stop.wait()
    lifecycle = app[keys.LIFECYCLE]
    lifecycle.accepting = False
    deadline = asyncio.get_running_loop().time() + config.shutdown_grace_s
    log.info("shutting_down", grace_s=config.shutdown_grace_s, in_flight=lifecycle.in_flight)
    # Keep listening while requests are in flight: /readyz answers 503 meanwhile, so a load
    # balancer moves new traffic elsewhere before the port closes (what still comes is served).
    await lifecycle.wait_idle(deadline)
    await site.stop()
    # Requests accepted just before the port closed; all share the one SHUTDOWN_GRACE_S.
    if not await lifecycle.wait_idle(deadline):
        log.warning("shutdown_grace_elapsed", in_flight=lifecycle.in_flight)
    await runner.cleanup()  # closes idle connections, cuts off what is left, drains NATS
    log.info("stopped")
