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
from shared.contracts import StreamEnd, StreamError, StreamMeta, StreamRows
from shared.errors import ServiceError
from shared.stream import StreamConsumer


@dataclass
class QueryResult:
    """What a relayed query produced so far; complete once `finished` is true."""

    columns: list[Any] = field(default_factory=list)
    preview: list[Any] = field(default_factory=list)
    row_count: int = 0
    bytes: int = 0
    """JSON bytes of rows relayed."""
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
        match message:
            case StreamRows(offset=offset, count=count, rows=rows):
                await stream.rows(offset, rows)
                result.row_count += count
                result.bytes += len(rows)
                metrics.QUERY_ROWS.inc(count)
            case StreamMeta(columns=columns, preview=preview):
                result.columns, result.preview = [{"name": col.name, "type": col.type} for col in columns], preview
                await stream.output({"columns": result.columns, "preview": result.preview}, preliminary=True)
            case StreamEnd(row_count=row_count, truncated=truncated):
                result.row_count, result.truncated, result.finished = row_count, truncated, True
                await stream.output(result.output(), preliminary=False)
            case StreamError(error=error):
                raise ServiceError(error.code, error.message)
