"""Builds the session service from its config and runs it until SIGTERM."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import nats.errors
import nats.js.errors as jse
import structlog
from nats.aio.client import Client as NATS

from services.session.config import SessionConfig
from services.session.connections import ConnectionHandlers, ConnectionsRedis, ConnectionStore
from services.session.examples import ExampleHandlers, ExampleStore
from services.session.fallback import Fallback, KvFallback, MemoryFallback
from services.session.handlers import SessionHandlers
from services.session.history import HistoryHandlers, HistoryLimits, HistoryStore
from services.session.history_redis import HistoryRedis
from services.session.limits import Limits
from services.session.outage import OutageRouter
from services.session.recent import RecentStore
from services.session.redis_store import RedisStore, create_client
from services.session.store import SessionStore
from shared.bus import Server, close, connect
from shared.contracts import CONVERSATION_OPS, EXAMPLE_OPS, SESSION_CONNECTION_OPS, SESSION_QUEUE, Subjects
from shared.logging import setup_logging
from shared.ops import serve_ops
from shared.runtime import stop_event

log = structlog.get_logger(__name__)


async def open_fallback(nc: NATS, config: SessionConfig) -> Fallback:
    """The JetStream KV bucket when the NATS server has JetStream, else the bounded memory store."""
    js = nc.jetstream(timeout=2.0)
    try:
        await js.account_info()
        return await KvFallback.open(js, config.kv_bucket, config.lifetime_s, replicas=config.nats_js_replicas)
    except (jse.Error, nats.errors.Error, TimeoutError) as exc:
        log.warning(
            "jetstream_unavailable",
            fallback="memory",
            max_entries=config.memory_max_entries,
            error=f"{type(exc).__name__}: {exc}",
            consequence="while Redis is down each replica keeps its own sessions",
        )
        return MemoryFallback(config.memory_max_entries, config.lifetime_s)


def session_redis(config: SessionConfig, fallback: Fallback) -> RedisStore | None:
    """The sessions' Redis (also what the outage router probes), or None when none is configured."""
    if config.redis is None:
        return None
    log.info(
        "session_store",
        store="redis",
        target=config.redis.display,
        tls=config.redis.tls,
        source=config.redis.source,
        key_prefix=config.key_prefix,
        lifetime_s=config.lifetime_s,
        fallback=fallback.name,
    )
    return RedisStore(create_client(config.redis), key_prefix=config.key_prefix, lifetime_s=config.lifetime_s)


@dataclass
class SessionService:
    """A running session service: what its tests and its shutdown reach for."""

    config: SessionConfig
    nc: NATS
    store: SessionStore
    router: OutageRouter
    server: Server
    subjects: Subjects

    async def readiness(self) -> dict[str, bool]:
        return await self.server.readiness()

    async def drain(self) -> None:
        """Stop taking messages and finish those in hand (within SHUTDOWN_GRACE_S); later calls do nothing."""
        await self.server.drain(self.config.shutdown_grace_s)


@asynccontextmanager
async def create_service(config: SessionConfig) -> AsyncIterator[SessionService]:
    """Connect, open the stores, subscribe and serve the ops endpoints; drain and release all of it on exit.

    Every resource enters one AsyncExitStack, so what was opened is closed in reverse order
    whether start-up finished or failed half-way.
    """
    async with AsyncExitStack() as stack:
        nc = await connect(config.nats_url, "session", credentials=config.nats_credentials)
        stack.push_async_callback(close, nc)
        fallback = await open_fallback(nc, config)
        redis = session_redis(config, fallback)
        router = OutageRouter(redis, fallback)
        # Every store registers its write-back before start(): a write-back of an earlier outage may begin there.
        store = SessionStore(redis, router)
        history_limits = HistoryLimits(config.conversation_lifetime_s, config.conversation_max_messages, config.conversation_max_message_bytes)
        history_redis = HistoryRedis(create_client(config.redis, max_connections=32), lifetime_s=config.conversation_lifetime_s) if config.redis else None
        history = HistoryStore(history_redis, router, history_limits)
        stack.push_async_callback(history.close)
        connections = ConnectionStore(ConnectionsRedis(create_client(config.redis, max_connections=16)) if config.redis else None, router)
        stack.push_async_callback(connections.close)
        stack.push_async_callback(store.close)
        stack.push_async_callback(router.close)  # first: stops the probe and write-back, which use both stores' Redis
        await router.start()

        limits = Limits(create_client(config.redis, max_connections=16) if config.redis else None, router)
        stack.push_async_callback(limits.close)
        await limits.load()

        recent = RecentStore(create_client(config.redis, max_connections=8) if config.redis else None, router, lifetime_s=config.conversation_lifetime_s)
        stack.push_async_callback(recent.close)

        subjects = Subjects(config.subject_prefix)
        handlers = SessionHandlers(store)
        server = Server(nc, "session", metadata={"subject_prefix": config.subject_prefix}, description="Sessions, conversation history and quotas")
        service = SessionService(config, nc, store, router, server, subjects)
        for subject, handler in (
            (subjects.session_get, handlers.get),
            (subjects.session_set, handlers.set),
            (subjects.session_patch, handlers.patch),
            (subjects.session_delete, handlers.delete),
            (subjects.session_ping, handlers.ping),
            (subjects.session_limit, limits.handle),
            (subjects.session_recent("add"), recent.add),
            (subjects.session_recent("list"), recent.list),
        ):
            await server.add(subject, SESSION_QUEUE, handler)
        await server.add_bytes(subjects.session_get_many, SESSION_QUEUE, handlers.get_many)
        history_handlers = HistoryHandlers(history).routes()
        for op in CONVERSATION_OPS:
            await server.add(subjects.session_conversation(op), SESSION_QUEUE, history_handlers[op], name=f"conversation_{op}")
        examples = ExampleStore(create_client(config.redis, max_connections=8) if config.redis else None, router)
        stack.push_async_callback(examples.close)
        example_handlers = ExampleHandlers(examples).routes()
        for op in EXAMPLE_OPS:
            await server.add(subjects.session_examples(op), SESSION_QUEUE, example_handlers[op], name=f"examples_{op}")
        connection_handlers = ConnectionHandlers(connections, nc, subjects).routes()
        for op in SESSION_CONNECTION_OPS:
            await server.add(subjects.session_connection(op), SESSION_QUEUE, connection_handlers[op], name=f"connection_{op}")
        await server.start()  # discovery last: a service found there serves every endpoint

        await stack.enter_async_context(serve_ops("0.0.0.0", config.ops_port, service.readiness))
        stack.push_async_callback(service.drain)  # first to run on exit: the ops endpoints still answer meanwhile
        log.info("service_ready", store=router.name, degraded=router.degraded, subject_prefix=config.subject_prefix, ops_port=config.ops_port)
        yield service
    log.info("stopped")


async def serve(config: SessionConfig, stop: asyncio.Event) -> None:
    """Run the session service until `stop` is set, then shut it down gracefully."""
    async with create_service(config):
        await stop.wait()


async def main() -> None:
    config = SessionConfig.from_env()
    setup_logging("session", config.log_level, config.log_flush_ms)
    await serve(config, stop_event())
