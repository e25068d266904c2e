"""structlog set-up shared by every service: JSON lines when not a TTY, a `request_id` on every line."""

from __future__ import annotations

import logging
import sys
import uuid
from typing import Any

import orjson
import structlog

REQUEST_ID_HEADER = "Dbg-Request-Id"


def _json_text(value: object, **kwargs: Any) -> str:
    """orjson for ProcessorFormatter, which needs text rather than bytes."""
    return orjson.dumps(value, default=kwargs.get("default")).decode()


def setup_logging(service: str, level: str = "INFO") -> None:
    """Configure structlog and the stdlib root logger once per process.

    structlog's own lines and the records of the stdlib loggers that libraries use (aiohttp,
    asyncpg, nats, redis, asyncio) pass the same processors, so stderr holds one format: JSON
    lines off a TTY, with tracebacks as data (`dict_tracebacks`), and the console renderer on
    a TTY. structlog writes its lines straight to stderr; stdlib records go through
    `structlog.stdlib.ProcessorFormatter`, with the shared processors as its pre-chain.
    """
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)

    def add_service(_logger: object, _method: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
        event.setdefault("service", service)
        return event

    shared_processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        add_service,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    tty = sys.stderr.isatty()
    if tty:
        # The console renderer prints exceptions itself, as readable tracebacks.
        render: list[structlog.types.Processor] = [structlog.processors.StackInfoRenderer(), structlog.dev.ConsoleRenderer()]
        foreign_render: list[structlog.types.Processor] = [structlog.dev.ConsoleRenderer()]
        logger_factory: Any = structlog.PrintLoggerFactory(sys.stderr)
    else:
        render = [structlog.processors.StackInfoRenderer(), structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer(serializer=orjson.dumps)]
        foreign_render = [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer(serializer=_json_text)]
        logger_factory = structlog.BytesLoggerFactory(sys.stderr.buffer)
    structlog.configure(
        processors=[*shared_processors, *render],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=logger_factory,
        cache_logger_on_first_use=True,
    )

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared_processors, structlog.stdlib.add_logger_name, structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *foreign_render],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(numeric, logging.WARNING))  # libraries' INFO and DEBUG lines are chatty


def new_request_id() -> str:
    return uuid.uuid4().hex


def bind_request(request_id: str | None, **values: object) -> str:
    """Start a fresh log context for one request or message; returns the request id in use."""
    rid = request_id or new_request_id()
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=rid, **values)
    return rid


def current_request_id() -> str | None:
    value = structlog.contextvars.get_contextvars().get("request_id")
    return value if isinstance(value, str) else None


def mask(secret: str | None, keep: int = 6) -> str:
    """Show only the start of a session id or token in logs."""
    if not secret:
        return ""
    return secret[:keep] + "…" if len(secret) > keep else "…"
