"""The gateway's probes: /healthz (the process answers) and /readyz (it should receive traffic)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from aiohttp import web

from services.gateway import keys
from shared.errors import ServiceError

PING_TIMEOUT_S = 1.0


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(http_request: web.Request) -> web.Response:
    """Ready when accepting traffic, connected to NATS, and a session and a query replica answer."""
    app = http_request.app

    async def answers(ping: Awaitable[object]) -> bool:
        try:
            await ping
            return True
        except ServiceError:
            return False

    session_ok, query_ok = await asyncio.gather(answers(app[keys.SESSIONS].ping(PING_TIMEOUT_S)), answers(app[keys.QUERY].ping(PING_TIMEOUT_S)))
    checks = {"accepting": app[keys.LIFECYCLE].accepting, "nats": app[keys.NATS_CLIENT].is_connected, "session": session_ok, "query": query_ok}
    ready = all(checks.values())
    return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)
