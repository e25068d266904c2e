"""The query service process: NATS handlers, lazily opened sources, ops endpoints, and a graceful stop."""

from __future__ import annotations

import asyncio
import gc
import time
from contextlib import AsyncExitStack

import structlog

from services.query import schema
from services.query.config import QueryConfig
from services.query.engines import EngineSettings, Sources
from services.query.handlers import QueryHandlers
from services.query.sample import ensure_sample
from services.query.wire import ByteLimits
from shared.bus import Server, connect, redact_url
from shared.bus import close as close_nats
from shared.contracts import QUERY_QUEUE, Subjects
from shared.logging import setup_logging
from shared.ops import serve_ops
from shared.runtime import stop_event

log = structlog.get_logger(__name__)


async def main() -> None:
    config = QueryConfig.from_env()
    setup_logging("query", config.log_level)
    stop = stop_event()
    if config.uses_sample:
        await asyncio.to_thread(ensure_sample, config.sample_path)
    subjects = Subjects(config.subject_prefix)
    async with AsyncExitStack() as stack:
        nc = await connect(config.nats_url, "query")
        stack.push_async_callback(close_nats, nc)
        if config.allow_privileged:
            log.warning(
                "privileged_sources_allowed",
                variable="QUERY_ALLOW_PRIVILEGED",
                detail="sources whose database account can write, use server files, run programs or signal other sessions are served",
                docs="docs/query-account.md",
            )
        limits = ByteLimits(max_cell_bytes=config.max_cell_bytes, max_row_bytes=config.max_row_bytes)
        sources = Sources(config.sources, EngineSettings(pool_size=config.pool_size, limits=limits), allow_privileged=config.allow_privileged)
        stack.push_async_callback(sources.close)
        # Check every source's account now, in the background: queries wait for nothing.
        opening = asyncio.create_task(sources.open_all())

        async def stop_opening() -> None:
            opening.cancel()
            await asyncio.gather(opening, return_exceptions=True)

        stack.push_async_callback(stop_opening)
        handlers = QueryHandlers(config, nc, sources, subjects)
        server = Server(nc)
        await server.add(subjects.query_execute, QUERY_QUEUE, handlers.execute)
        await server.add(subjects.query_ping, QUERY_QUEUE, handlers.ping)
        schemas = schema.SchemaService(sources, schema.SchemaConfig.from_env())
        await server.add(subjects.query_schema, QUERY_QUEUE, schemas.handle)

        async def readiness() -> dict[str, bool]:
            # False from SIGTERM on; requests already routed here are still served.
            return {"accepting": not stop.is_set(), "nats": nc.is_connected}

        await stack.enter_async_context(serve_ops("0.0.0.0", config.ops_port, readiness))
        # Everything loaded so far lives as long as the process: keep it out of the cyclic
        # collector's full passes, which streaming millions of rows would otherwise trigger often.
        gc.freeze()
        log.info(
            "service_ready",
            subject_prefix=config.subject_prefix,
            sources={name: redact_url(url) for name, url in config.sources.items()},
            ops_port=config.ops_port,
        )
        await stop.wait()
        deadline = time.monotonic() + config.shutdown_grace_s
        log.info("shutting_down", streams=handlers.streams_in_flight, grace_s=config.shutdown_grace_s)
        await server.drain(config.shutdown_grace_s)
        await handlers.shutdown(max(0.0, deadline - time.monotonic()))
    log.info("stopped")
