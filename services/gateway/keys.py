"""Typed application state of the gateway."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from nats.aio.client import Client as NATS

from services.gateway.config import GatewayConfig
from services.gateway.sessions import SessionClient, SessionCookie
from shared.contracts import Subjects


@dataclass
class Lifecycle:
    """Whether the gateway should receive traffic (false once SIGTERM arrived)."""

    accepting: bool = True


CONFIG = web.AppKey("config", GatewayConfig)
SUBJECTS = web.AppKey("subjects", Subjects)
NATS_CLIENT = web.AppKey("nats", NATS)
SESSIONS = web.AppKey("sessions", SessionClient)
COOKIE = web.AppKey("cookie", SessionCookie)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
