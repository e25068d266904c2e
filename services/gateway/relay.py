"""Relays one query's stream from the query service to an HTTP client as `execute_query` tool parts.

Used by POST /api/query and by the chat's `execute_query` tool, so that both stream the
same parts under the same flow control: every rows message is written to the client
before it is acknowledged, and the rows cross the gateway exactly once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.gateway import metrics
from services.gateway.sse import ToolStream
from shared.errors import ServiceError
from shared.stream import StreamConsumer


@dataclass
class QueryResult:
    """What a relayed query produced so far; complete once `finished` is true."""

    columns: list[Any] = field(default_factory=list)
    preview: list[Any] = field(default_factory=list)
    row_count: int = 0
    truncated: bool = False
    finished: bool = False

    def output(self) -> dict[str, Any]:
        """The final tool output, as the browser gets it."""
        return {"columns": self.columns, "preview": self.preview, "row_count": self.row_count, "truncated": self.truncated}


async def relay(consumer: StreamConsumer, stream: ToolStream, result: QueryResult, alive: Callable[[], bool]) -> None:
    """Write meta, rows and end of a started query as tool parts; raises ServiceError on an error message.

    `result` is filled in as messages arrive, so the caller knows how far it got even when
    this raises (ConnectionResetError when the client went away).
    """
    async for message in consumer.messages(alive=alive):
        kind = message["t"]
        if kind == "rows":
            await stream.rows(message["offset"], message["rows"])
            result.row_count += message["count"]
            metrics.QUERY_ROWS.inc(message["count"])
        elif kind == "meta":
            result.columns, result.preview = message["columns"], message["preview"]
            await stream.output({"columns": result.columns, "preview": result.preview}, preliminary=True)
        elif kind == "end":
            result.row_count, result.truncated, result.finished = message["row_count"], message["truncated"], True
            await stream.output(result.output(), preliminary=False)
        elif kind == "error":
            raise ServiceError.from_dict(message["error"])
