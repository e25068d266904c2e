"""structlog set-up shared by every service: JSON lines when not a TTY, a `request_id` on every line."""

from __future__ import annotations

import asyncio
import atexit
import logging
import random
import sys
import threading
from collections.abc import Callable
from typing import BinaryIO

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
        logger_factory=_LineBuffer.factory(sys.stderr.buffer) if serializer else structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")


class _LineBuffer:
    """JSON log lines written once per turn of the event loop: one write() for the lines of many requests.

    Under load a turn of the loop serves many requests, and a write() per line was the
    largest single cost of a request in the gateway. Lines logged outside a running loop
    (start-up, other threads) and every error line are written at once; `flush_logs()`
    (called on exit) writes what is left. So a line waits at most until the loop turns.
    """

    _instances: list[_LineBuffer] = []

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._lines: list[bytes] = []
        self._scheduled = False
        self._lock = threading.Lock()

    @classmethod
    def factory(cls, stream: BinaryIO) -> Callable[..., _LineBuffer]:
        buffer = cls(stream)
        cls._instances.append(buffer)
        return lambda *_args: buffer

    def msg(self, message: bytes) -> None:
        with self._lock:
            self._lines.append(message)
            if self._scheduled:
                return
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None and threading.current_thread() is threading.main_thread():
                self._scheduled = True
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
