"""Prometheus metrics of the session service, served at /metrics on the ops port."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from prometheus_client import Counter, Gauge, Histogram

from shared.errors import ServiceError

log = structlog.get_logger(__name__)

REDIS_COMMANDS = Counter(
    "session_redis_commands_total",
    "Redis commands sent by the session service, by command name.",
    ["command"],
)
LIMIT_CALLS = Counter(
    "session_limit_calls_total",
    "session.limit calls, by outcome (allowed, refused, read) and where they were counted (redis, local).",
    ["outcome", "store"],
)
STORE_FALLBACK = Counter(
    "session_store_fallback_total",
    "Times the service switched from Redis to its fallback store.",
)
STORE_DEGRADED = Gauge(
    "session_store_degraded",
    "1 while sessions are served from the fallback store (or written back from it) instead of Redis.",
)
WRITEBACK = Counter(
    "session_writeback_total",
    "Sessions written back from the fallback store to Redis after an outage, by outcome.",
    ["outcome"],  # set, delete, superseded
)
CORRUPT = Counter(
    "session_corrupt_total",
    "Stored session values that could not be decoded and were treated as no session.",
)
MEMORY_EVICTIONS = Counter(
    "session_memory_evictions_total",
    "Sessions dropped from the bounded in-memory store to respect SESSION_MEMORY_MAX_ENTRIES.",
)
CALLS = Histogram(
    "session_call_seconds",
    "Session calls served, by operation and outcome.",
    ["op", "outcome"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
REDIS_REFUSED = Gauge(
    "session_redis_refused",
    "1 while Redis refuses this service (credentials, ACL permissions, protected mode); the redis_refused log line names the cause.",
)


async def timed_call[T](op: str, call: Callable[[], Awaitable[T]], event: str, **fields: Any) -> T:
    """Run one call, observe it in CALLS under `op` and its outcome, and log `event` at debug level."""
    start = time.perf_counter()
    outcome = "error"
    try:
        reply = await call()
        outcome = "ok"
        return reply
    except ServiceError as exc:
        outcome = exc.code
        raise
    finally:
        elapsed = time.perf_counter() - start
        CALLS.labels(op=op, outcome=outcome).observe(elapsed)
        log.debug(event, op=op, outcome=outcome, ms=round(elapsed * 1000, 3), **fields)
