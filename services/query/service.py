"""Builds the query service from its config: NATS handlers, lazily opened sources, ops endpoints, and a graceful stop."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import structlog
from nats.aio.client import Client as NATS

from services.query import schema, search
from services.query.config import QueryConfig
from services.query.connections.address import AddressPolicy, Resolver
from services.query.connections.handlers import ConnectionHandlers
from services.query.connections.opener import Opener
from services.query.connections.pools import UserPools
from services.query.engines import EngineSettings, Sources
from services.query.handlers import QueryHandlers
from services.query.sample import ensure_sample
from services.query.wire import ByteLimits
from shared.bus import Server, connect, redact_url
from shared.bus import close as close_nats
from shared.contracts import QUERY_CONNECTION_OPS, QUERY_QUEUE, Subjects
from shared.logging import setup_logging
from shared.ops import serve_ops
from shared.runtime import stop_event

log = structlog.get_logger(__name__)


@dataclass
class QueryService:
    """A running query service: what its tests and its shutdown reach for."""

    config: QueryConfig
    nc: NATS
    sources: Sources
    handlers: QueryHandlers
    server: Server
    subjects: Subjects
    connections: ConnectionHandlers
    accepting: bool = True

    async def readiness(self) -> dict[str, bool]:
        return await self.server.readiness()

    async def drain(self) -> None:
        """Take no more queries, then give running streams what is left of SHUTDOWN_GRACE_S; later calls do nothing."""
        if not self.server.accepting:
            return
        deadline = time.monotonic() + self.config.shutdown_grace_s
        await self.server.drain(self.config.shutdown_grace_s, streams=self.handlers.streams_in_flight)
        await self.handlers.shutdown(max(0.0, deadline - time.monotonic()))


@asynccontextmanager
async def create_service(config: QueryConfig, *, resolver: Resolver | None = None) -> AsyncIterator[QueryService]:
    """Connect, subscribe and serve the ops endpoints; drain and release everything on exit, in one AsyncExitStack.

    `resolver` replaces the system's name resolution for users' connections (tests of the SSRF guard).
    """
    if config.uses_sample:
        await asyncio.to_thread(ensure_sample, config.sample_path)
    subjects = Subjects(config.subject_prefix)
    async with AsyncExitStack() as stack:
        nc = await connect(config.nats_url, "query", credentials=config.nats_credentials)
        stack.push_async_callback(close_nats, nc)
        if config.allow_privileged:
            log.warning(
                "privileged_sources_allowed",
                variable="QUERY_ALLOW_PRIVILEGED",
                detail="sources whose database account can write, use server files, run programs or signal other sessions are served",
                docs="docs/query-account.md",
            )
        limits = ByteLimits(max_cell_bytes=config.max_cell_bytes, max_row_bytes=config.max_row_bytes)
        sources = Sources(
            config.sources,
            EngineSettings(
                pool_size=config.pool_size,
                limits=limits,
                pg_work_mem=config.pg_work_mem,
                pg_temp_file_limit=config.pg_temp_file_limit,
                mysql_max_mem_bytes=config.mysql_max_mem_bytes,
            ),
            allow_privileged=config.allow_privileged,
            roles=config.roles,
        )
        stack.push_async_callback(sources.close)
        # Check every source's account now, in the background: queries wait for nothing.
        opening = asyncio.create_task(sources.open_all())

        async def stop_opening() -> None:
            opening.cancel()
            await asyncio.gather(opening, return_exceptions=True)

        stack.push_async_callback(stop_opening)
        connections = user_connections(config, nc, subjects, limits, resolver)
        pools = UserPools(connections.load, max_pools=config.max_pools, idle_s=config.pool_idle_s, max_per_user=config.max_concurrent_per_user)
        connections.pools = pools
        pools.start()
        stack.push_async_callback(pools.close)
        handlers = QueryHandlers(config, nc, sources, subjects, pools)
        server = Server(nc, "query", metadata={"subject_prefix": config.subject_prefix}, description="Read-only SQL on the configured sources")
        service = QueryService(config, nc, sources, handlers, server, subjects, connections)
        for op in QUERY_CONNECTION_OPS:
            await server.add(subjects.query_connection(op), QUERY_QUEUE, getattr(connections, op), name=f"connection_{op}")
        closed = await nc.subscribe(subjects.query_connection_closed, cb=connections.on_closed)  # every replica: no queue group
        stack.push_async_callback(closed.unsubscribe)
        await server.add(subjects.query_execute, QUERY_QUEUE, handlers.execute)
        await server.add(subjects.query_ping, QUERY_QUEUE, handlers.ping)
        schemas = schema.SchemaService(sources, config.schema, pools)
        await server.add(subjects.query_schema, QUERY_QUEUE, schemas.handle)
        searches = search.SchemaSearch(sources, config.search, config.schema, config.allowed_functions, config.timeout_s, pools)
        stack.push_async_callback(searches.close)
        await server.add(subjects.query_schema_search, QUERY_QUEUE, searches.handle)
        await server.start()  # discovery last: a service found there serves every endpoint

        await stack.enter_async_context(serve_ops("0.0.0.0", config.ops_port, service.readiness))
        stack.push_async_callback(service.drain)  # first to run on exit: the ops endpoints still answer meanwhile
        log.info(
            "service_ready",
            subject_prefix=config.subject_prefix,
            sources={name: redact_url(url) for name, url in config.sources.items()},
            ops_port=config.ops_port,
            connections="on" if connections.enabled else "off (CONNECTIONS_KEYS is not set)",
        )
        yield service
    log.info("stopped")


def user_connections(config: QueryConfig, nc: NATS, subjects: Subjects, limits: ByteLimits, resolver: Resolver | None) -> ConnectionHandlers:
    """The handlers of users' own connections, with their SSRF guard and their engines' settings."""
    policy = AddressPolicy(config.connections_allowed_networks, config.connections_allowed_ports)
    settings = EngineSettings(pool_size=config.pool_size, connect_timeout_s=config.connections_connect_timeout_s, limits=limits)
    opener = Opener(policy, settings, config.connections_connect_timeout_s, resolver)
    return ConnectionHandlers(nc, subjects, config.connections_keys, opener, operator_sources=frozenset(config.sources), max_per_user=config.connections_max_per_user)


async def serve(config: QueryConfig, stop: asyncio.Event) -> None:
    """Run the query service until `stop` is set, then shut it down gracefully."""
    async with create_service(config):
        # Everything loaded so far lives as long as the process: keep it out of the cyclic
        # collector's full passes, which streaming millions of rows would otherwise trigger often.
        gc.freeze()
        await stop.wait()


async def main() -> None:
    config = QueryConfig.from_env()
    setup_logging("query", config.log_level, config.log_flush_ms)
    await serve(config, stop_event())
