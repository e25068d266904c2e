"""structlog set-up shared by every service: JSON lines when not a TTY, a `request_id` on every line."""

from __future__ import annotations

import logging
import sys
import uuid

import orjson
import structlog

REQUEST_ID_HEADER = "Dbg-Request-Id"


def setup_logging(service: str, level: str = "INFO") -> None:
    """Configure structlog and the stdlib root logger once per process."""
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
    if sys.stderr.isatty():
        renderer: structlog.types.Processor = structlog.dev.ConsoleRenderer()
        serializer = None
    else:
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        serializer = True
    structlog.configure(
        processors=[
            *shared_processors,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.BytesLoggerFactory(sys.stderr.buffer) if serializer else structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")


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
