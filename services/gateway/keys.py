"""Typed application state of the gateway."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web
from nats.aio.client import Client as NATS

from services.gateway.clients import ConnectionsClient, ExamplesClient, HistoryClient, Limiter, QueryClient, RecentClient, SessionClient
from services.gateway.config import GatewayConfig
from services.gateway.sessions import SessionCookie
from shared.contracts import Subjects


@dataclass
class Lifecycle:
    """Whether the gateway should receive traffic (false once SIGTERM arrived), and the requests it holds."""

    accepting: bool = True
    in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()

    def enter(self) -> None:
        self.in_flight += 1
        self.idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()

    async def wait_idle(self, deadline: float) -> bool:
        """Wait until no request is in flight or the loop clock reaches `deadline`; True if idle."""
        try:
            await asyncio.wait_for(self.idle.wait(), max(0.0, deadline - asyncio.get_running_loop().time()))
        except TimeoutError:
            return False
        return True


CONFIG = web.AppKey("config", GatewayConfig)
SUBJECTS = web.AppKey("subjects", Subjects)
NATS_CLIENT = web.AppKey("nats", NATS)
SESSIONS = web.AppKey("sessions", SessionClient)
COOKIE = web.AppKey("cookie", SessionCookie)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
LIMITER = web.AppKey("limiter", Limiter)
HISTORY = web.AppKey("history", HistoryClient)
QUERY = web.AppKey("query", QueryClient)
EXAMPLES = web.AppKey("examples", ExamplesClient)
RECENT = web.AppKey("recent", RecentClient)
CONNECTIONS = web.AppKey("connections", ConnectionsClient)
