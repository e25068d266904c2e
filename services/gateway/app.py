"""The gateway: the only public HTTP surface. Built by `create_app(config)`, run by `main()`."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from services.gateway import handlers, keys, metrics
from services.gateway.auth.web import csrf, token_verifier
from services.gateway.config import GatewayConfig
from services.gateway.errors import error_response, from_service_error
from services.gateway.limits import Limiter
from services.gateway.schema import get_schema
from services.gateway.sessions import SessionClient, SessionCookie
from shared.bus import close, connect, request
from shared.contracts import Subjects
from shared.errors import BAD_REQUEST, INTERNAL, NOT_FOUND, ServiceError
from shared.logging import bind_request, setup_logging
from shared.ops import metrics_handler
from shared.runtime import stop_event

log = structlog.get_logger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
_CUT_OFF_S = 1.0
_HTTP_CODES = {400: BAD_REQUEST, 404: NOT_FOUND, 405: "method_not_allowed", 413: "too_large"}


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
    try:
        response = await handler(request)
    except ServiceError as exc:
        response = from_service_error(exc)
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
    metrics.REQUESTS.labels(route, str(response.status)).inc()
    metrics.LATENCY.labels(route).observe(elapsed)
    if route not in ("/healthz", "/metrics"):
        log.info("request", status=response.status, duration_ms=round(elapsed * 1000, 2))
    return response


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(http_request: web.Request) -> web.Response:
    """Ready when accepting traffic, connected to NATS, and a session and a query replica answer."""
    app = http_request.app
    nc = app[keys.NATS_CLIENT]
    subjects = app[keys.SUBJECTS]

    async def answers(subject: str) -> bool:
        try:
            await request(nc, subject, {}, timeout=1.0)
            return True
        except ServiceError:
            return False

    session_ok, query_ok = await asyncio.gather(answers(subjects.session_ping), answers(subjects.query_ping))
    checks = {"accepting": app[keys.LIFECYCLE].accepting, "nats": nc.is_connected, "session": session_ok, "query": query_ok}
    ready = all(checks.values())
    return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)


def create_app(config: GatewayConfig) -> web.Application:
    app = web.Application(middlewares=[observe, csrf], client_max_size=1024 * 1024)
    app[keys.CONFIG] = config
    app[keys.SUBJECTS] = Subjects(config.subject_prefix)
    app[keys.COOKIE] = SessionCookie(config)
    app[keys.LIFECYCLE] = keys.Lifecycle()
    app.cleanup_ctx.append(nats_connection)
    if config.token_login:
        app.cleanup_ctx.append(token_verifier)

    app.router.add_post("/auth/login", handlers.login)
    app.router.add_post("/auth/logout", handlers.logout)
    app.router.add_get("/api/me", handlers.me)
    app.router.add_post("/api/conversations", handlers.new_conversation)
    app.router.add_post("/api/query", handlers.query)
    app.router.add_get("/api/schema", get_schema)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    return app


async def nats_connection(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    nc = await connect(config.nats_url, "gateway")
    app[keys.NATS_CLIENT] = nc
    app[keys.SESSIONS] = SessionClient(nc, app[keys.SUBJECTS], config.session_timeout_s)
    app[keys.LIMITER] = Limiter(nc, app[keys.SUBJECTS], config.session_timeout_s)
    yield
    await close(nc)


async def main() -> None:
    config = GatewayConfig.from_env()
    setup_logging("gateway", config.log_level)
    stop = stop_event()
    app = create_app(config)
    # Shutdown waits for in-flight requests itself (below); aiohttp's own wait only cuts off the rest.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=_CUT_OFF_S)
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
