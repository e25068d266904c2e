"""The gateway's probes: /healthz (the process answers) and /readyz (it should receive traffic)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from services.gateway import keys
from shared.bus import request
from shared.errors import ServiceError


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
