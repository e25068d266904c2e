"""structlog set-up shared by every service: JSON lines when not a TTY, a `request_id` on every line."""

from __future__ import annotations

import asyncio
import atexit
import logging
import random
import sys
import threading
from typing import Any, BinaryIO

import orjson
import structlog

REQUEST_ID_HEADER = "Dbg-Request-Id"


def _json_text(value: object, **kwargs: Any) -> str:
    """orjson for ProcessorFormatter, which needs text rather than bytes."""
    return orjson.dumps(value, default=kwargs.get("default")).decode()


DICT_TRACEBACKS = structlog.processors.ExceptionRenderer(structlog.tracebacks.ExceptionDictTransformer(show_locals=False))
"""structlog's `dict_tracebacks` without the frames' local variables: a local may hold a database password."""


def setup_logging(service: str, level: str = "INFO", flush_ms: int = 50) -> None:
    """Configure structlog and the stdlib root logger once per process.

    structlog's own lines and the records of the stdlib loggers that libraries use (aiohttp,
    asyncpg, nats, redis, asyncio) pass the same processors, so stderr holds one format: JSON
    lines off a TTY, with tracebacks as data (`dict_tracebacks`, without local variables), and
    the console renderer (plain tracebacks, no locals) on a TTY. structlog renders its own lines; stdlib records go through
    `structlog.stdlib.ProcessorFormatter`, with the shared processors as its pre-chain. Off a
    TTY both go into one `_LineBuffer`, written at most `flush_ms` apart (LOG_FLUSH_MS; 0: once
    per turn of the event loop).
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
    handler: logging.Handler
    if sys.stderr.isatty():
        # The console renderer prints exceptions itself, as readable tracebacks.
        console = structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
        render: list[structlog.types.Processor] = [structlog.processors.StackInfoRenderer(), console]
        foreign_render: list[structlog.types.Processor] = [console]
        logger_factory: Any = structlog.PrintLoggerFactory(sys.stderr)
        handler = logging.StreamHandler(sys.stderr)
    else:
        render = [structlog.processors.StackInfoRenderer(), DICT_TRACEBACKS, structlog.processors.JSONRenderer(serializer=orjson.dumps)]
        foreign_render = [DICT_TRACEBACKS, structlog.processors.JSONRenderer(serializer=_json_text)]
        buffer = _LineBuffer.open(sys.stderr.buffer, flush_ms / 1000)
        logger_factory = buffer.factory
        handler = _BufferHandler(buffer)  # stdlib lines join structlog's in one buffer, so their order holds
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
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(numeric, logging.WARNING))  # libraries' INFO and DEBUG lines are chatty


class _LineBuffer:
    """JSON log lines written together at most `flush_after_s` apart: one write() for the lines of many requests.

    A write() per line was the largest single cost of a request in the gateway, and a write()
    per turn of the event loop still cost 8 % of its CPU under load (docs/benchmarks.md).
    Lines logged outside a running loop (start-up, other threads) and every error line are
    written at once, after the lines held before them; MAX_LINES held lines are written at
    once too; `flush_logs()` (called on exit) writes what is left. So a line waits at most
    `flush_after_s`; with 0, until the loop turns.
    """

    MAX_LINES = 1000

    _instances: list[_LineBuffer] = []

    def __init__(self, stream: BinaryIO, flush_after_s: float = 0.05) -> None:
        self.flush_after_s = flush_after_s
        self._stream = stream
        self._lines: list[bytes] = []
        self._scheduled = False
        self._lock = threading.Lock()

    @classmethod
    def open(cls, stream: BinaryIO, flush_after_s: float = 0.05) -> _LineBuffer:
        """A buffer that `flush_logs()` empties on exit."""
        buffer = cls(stream, flush_after_s)
        cls._instances.append(buffer)
        return buffer

    def factory(self, *_args: Any) -> _LineBuffer:
        """structlog's logger factory: every logger writes to this one buffer."""
        return self

    def msg(self, message: bytes) -> None:
        with self._lock:
            self._lines.append(message)
            if self._scheduled and len(self._lines) < self.MAX_LINES:
                return
            if not self._scheduled:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:
                    loop = None
                if loop is not None and threading.current_thread() is threading.main_thread():
                    self._scheduled = True
                    if self.flush_after_s > 0:
                        loop.call_later(self.flush_after_s, self.flush)
                    else:
                        loop.call_soon(self.flush)
                    return
        self.flush()

    def msg_now(self, message: bytes) -> None:
        with self._lock:
            self._lines.append(message)
        self.flush()

    log = debug = info = warn = warning = msg
    err = error = critical = fatal = failure = exception = msg_now

    def flush(self) -> None:
        with self._lock:
            self._scheduled = False
            if not self._lines:
                return
            data = b"\n".join(self._lines) + b"\n"
            self._lines.clear()
            try:
                self._stream.write(data)
                self._stream.flush()
            except (OSError, ValueError):  # stderr closed or gone: nowhere left to write
                pass


class _BufferHandler(logging.Handler):
    """Writes stdlib records, rendered by ProcessorFormatter, to a line buffer: errors at once, the rest with the loop turn."""

    def __init__(self, buffer: _LineBuffer) -> None:
        super().__init__()
        self._buffer = buffer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record).encode()
            if record.levelno >= logging.ERROR:
                self._buffer.msg_now(line)
            else:
                self._buffer.msg(line)
        except Exception:
            self.handleError(record)


def flush_logs() -> None:
    """Write the log lines still buffered (on exit, before a last line written directly to stderr)."""
    for buffer in _LineBuffer._instances:
        buffer.flush()


atexit.register(flush_logs)


def new_request_id() -> str:
    # Unique, not secret: the Mersenne Twister saves a getrandom() syscall per request over uuid4.
    return f"{random.getrandbits(128):032x}"


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
