"""The login rate limit: token logins per client IP, counted in Redis by the session service for every replica."""

from __future__ import annotations

import structlog
from aiohttp import web

from services.gateway import keys
from services.gateway.auth.tokens import RetryLater
from services.gateway.auth.web import client_ip
from services.gateway.clients import Window

log = structlog.get_logger(__name__)

RATE_LIMITED = "rate_limited"


async def check_login_rate(request: web.Request) -> None:
    """Count this login attempt for the client's IP; 429 with Retry-After beyond AUTH_LOGIN_RATE."""
    limit, seconds = request.app[keys.CONFIG].auth_login_rate
    if limit <= 0:
        return
    ip = client_ip(request)
    result = await request.app[keys.LIMITER].hit(f"login:{ip}", [Window(name="login", seconds=seconds, limit=limit)])
    if not result.allowed:
        retry_after = result.retry_after or seconds
        log.warning("login_rate_limited", client_ip=ip, retry_after=retry_after, local=result.local)
        raise RetryLater(RATE_LIMITED, f"too many sign-in attempts from this address; try again in {retry_after} s", retry_after)
