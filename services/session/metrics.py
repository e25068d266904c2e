"""Prometheus metrics of the session service, served at /metrics on the ops port."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

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
BATCH_READS = Counter(
    "session_batch_reads_total",
    "Reads served in session.get_many batches, by outcome (ok or the read's error code); bus_request_seconds measures each batch.",
    ["outcome"],
)
REDIS_REFUSED = Gauge(
    "session_redis_refused",
    "1 while Redis refuses this service (credentials, ACL permissions, protected mode); the redis_refused log line names the cause.",
)
