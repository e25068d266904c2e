"""The small HTTP side door of the session and query services: /healthz, /readyz, /metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from aiohttp import web
from prometheus_client import REGISTRY
from prometheus_client.aiohttp import make_aiohttp_handler

Readiness = Callable[[], Awaitable[dict[str, bool]]]

# prometheus-client's own handler: content negotiation (text or OpenMetrics), `name[]` filters, gzip.
metrics_handler = make_aiohttp_handler(REGISTRY)


def build_ops_app(readiness: Readiness) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        checks = await readiness()
        ready = all(checks.values())
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    return app


@asynccontextmanager
async def serve_ops(host: str, port: int, readiness: Readiness) -> AsyncIterator[None]:
    """Run the ops endpoints on host:port for the duration of the block; port 0 disables them."""
    if port == 0:
        yield
        return
    runner = web.AppRunner(build_ops_app(readiness), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    try:
        yield
    finally:
        await runner.cleanup()
