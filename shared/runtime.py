"""Process entry helpers: the event loop, an Event set by SIGTERM/SIGINT, and the last words of a failed process."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog

from shared.errors import ConfigError
from shared.logging import flush_logs

CONFIG_EXIT = 2
"""Exit code of a process whose configuration is missing or malformed."""
FAILURE_EXIT = 1
"""Exit code of a process that stopped on an uncaught exception."""


def stop_event() -> asyncio.Event:
    """An Event that SIGTERM or SIGINT sets, on the running loop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def failure_line(service: str, exc: BaseException, *, exit_code: int) -> bytes:
    """One JSON log line for an exception that ends the process, the exception as data (type, message, frames)."""
    line: dict[str, Any] = {
        "event": "service_failed",
        "service": service,
        "level": "critical",
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "error": f"{type(exc).__name__}: {exc}",
        "exit_code": exit_code,
    }
    if isinstance(exc, ConfigError):
        line["reason"] = "configuration"
        line["exception"] = [{"exc_type": type(exc).__name__, "exc_value": str(exc)}]
    else:
        line["reason"] = "uncaught exception"
        line["exception"] = structlog.processors.ExceptionDictTransformer(show_locals=False)((type(exc), exc, exc.__traceback__))
    return orjson.dumps(line, default=str) + b"\n"


def run(main: Coroutine[Any, Any, None], service: str = "service") -> None:
    """Run `main` on uvloop where it is installed.

    Whatever ends it with an exception is written to stderr as one JSON line (`service_failed`)
    before the exit: a configuration error exits 2, anything else 1. stdout and stderr are
    flushed first, so the line is the last one and never interleaved.
    """
    try:
        import uvloop
    except ImportError:
        runner: Any = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(main)
        flush_logs()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        code = CONFIG_EXIT if isinstance(exc, ConfigError) else FAILURE_EXIT
        flush_logs()
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stderr.buffer.write(failure_line(service, exc, exit_code=code))
        sys.stderr.buffer.flush()
        raise SystemExit(code) from None
