"""The tools the model can call: `execute_query` (through the query service, as POST /api/query), `describe_schema`, `search_schema`, `show_chart` and `get_recent_queries`.

Each tool writes its parts to the client and returns what the model gets back: the summary
of prompt.query_summary / prompt.schema_summary, or `{"error": message}` so that the model
can correct itself in its next step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.aio.client import Client as NATS

from services.gateway.audit import QueryAudit
from services.gateway.chat import metrics, prompt, search
from services.gateway.chat.charts import QueryColumns, check_chart
from services.gateway.chat.model import ToolCall, parse_arguments
from services.gateway.chat.ui import UIStream
from services.gateway.clients import RECENT_DEFAULT_SOURCE, QueryClient, RecentClient
from services.gateway.relay import QueryResult, relay
from services.gateway.sse import client_outcome
from shared.access import Grant, unknown_source
from shared.contracts import RECENT_MAX, Caller, ConnectionRef, Subjects
from shared.errors import UNAUTHORIZED, UNKNOWN_SOURCE, ServiceError
from shared.limits import MAX_SQL_CHARS
from shared.stream import StreamConsumer

SCHEMA_TIMEOUT_S = 10.0
KNOWN = {t["function"]["name"] for t in prompt.TOOLS}
RECENT_DEFAULT = 10


@dataclass
class ToolContext:
    """What the tools of one turn share: who asks (`grant_for` decides their sources, `audit` starts a query's
    audit event) and where the parts go."""

    nc: NATS
    subjects: Subjects
    query: QueryClient
    ui: UIStream
    source: str | None
    stream_idle_s: float
    alive: Callable[[], bool]
    grant_for: Callable[[str | None], Grant]
    caller_for: Callable[[Grant], Caller]
    audit: Callable[[str | None, str], QueryAudit]
    uid: str | None = None
    """The caller, whose recent queries get_recent_queries reads."""
    recent: RecentClient | None = None
    last_query: QueryColumns | None = field(default=None)
    """The latest execute_query of this turn that returned columns: what show_chart may chart."""
    search_max_chars: int = 8000
    # The user's own databases by name (services/gateway/sources.py), and the tools as the model sees them.
    connections: Mapping[str, ConnectionRef] = field(default_factory=dict)
    tools: list[dict[str, Any]] = field(default_factory=lambda: prompt.TOOLS)


def _optional_str(args: dict[str, Any], name: str) -> str | None:
    value = args.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"'{name}' must be a string")
    return value


async def run(ctx: ToolContext, call: ToolCall) -> dict[str, Any]:
    """Run one call the model made, streaming its parts; returns the model's view of the result."""
    try:
        args = parse_arguments(call)
        if call.name == prompt.EXECUTE_QUERY:
            sql = args.get("sql")
            if not isinstance(sql, str) or not sql.strip():
                raise ValueError("'sql' must be a non-empty string")
            if len(sql) > MAX_SQL_CHARS:
                raise ValueError(f"'sql' is longer than {MAX_SQL_CHARS} characters")
            source = _optional_str(args, "source")
        elif call.name == prompt.SEARCH_SCHEMA:
            source = _optional_str(args, "source")
            query = args.get("query")
            if not isinstance(query, str) or not query.strip():
                raise ValueError("'query' must be a non-empty string: the question, or keywords")
            query = query[: search.MAX_QUERY_CHARS]
        elif call.name == prompt.DESCRIBE_SCHEMA:
            source = _optional_str(args, "source")
            tables = args.get("tables")
            if tables is not None and not (isinstance(tables, list) and all(isinstance(t, str) for t in tables)):
                raise ValueError("'tables' must be a list of table names")
        elif call.name == prompt.SHOW_CHART:
            chart = check_chart(args, ctx.last_query)
        elif call.name == prompt.GET_RECENT_QUERIES:
            source = _optional_str(args, "source")
            limit = args.get("limit", RECENT_DEFAULT)
            if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= RECENT_MAX:
                raise ValueError(f"'limit' must be a whole number from 1 to {RECENT_MAX}")
        else:
            known = ", ".join(t["function"]["name"] for t in prompt.TOOLS)
            raise ValueError(f"there is no tool named {call.name!r}; the tools are {known}")
    except ValueError as exc:
        metrics.TOOL_CALLS.labels(call.name if call.name in KNOWN else "unknown", "bad_arguments").inc()
        await ctx.ui.tool_input_error(call.id, call.name or "unknown", call.arguments, str(exc))
        return {"error": str(exc)}
    await ctx.ui.tool_input_available(call.id, call.name, args)
    if call.name == prompt.EXECUTE_QUERY:
        return await execute_query(ctx, call.id, sql, source or ctx.source)
    if call.name == prompt.SEARCH_SCHEMA:
        return await _search_schema(ctx, call.id, query, source or ctx.source)
    if call.name == prompt.SHOW_CHART:
        metrics.TOOL_CALLS.labels(prompt.SHOW_CHART, "ok").inc()
        await ctx.ui.tool(call.id).output(chart, preliminary=False)
        return prompt.chart_summary(chart)
    if call.name == prompt.GET_RECENT_QUERIES:
        return await _recent_queries(ctx, call.id, source or ctx.source, limit)
    return await _describe_schema(ctx, call.id, source or ctx.source, tables)


async def _recent_queries(ctx: ToolContext, call_id: str, source: str | None, limit: int) -> dict[str, Any]:
    stream = ctx.ui.tool(call_id)
    try:
        if ctx.uid is None or ctx.recent is None:
            raise ServiceError(UNAUTHORIZED, "no signed-in user")
        reply = await ctx.recent.list(ctx.uid, source, limit)
    except ServiceError as exc:
        metrics.TOOL_CALLS.labels(prompt.GET_RECENT_QUERIES, exc.code).inc()
        await stream.error(exc.message)
        return {"error": exc.message}
    metrics.TOOL_CALLS.labels(prompt.GET_RECENT_QUERIES, "ok").inc()
    queries = [{"sql": q.sql, "ran_at": datetime.fromtimestamp(q.at / 1000, UTC).isoformat(timespec="seconds")} for q in reply.queries]
    output = {"source": source or RECENT_DEFAULT_SOURCE, "queries": queries}
    await stream.output(output, preliminary=False)
    return output


async def execute_query(ctx: ToolContext, call_id: str, sql: str, source: str | None) -> dict[str, Any]:
    """Stream the query's preview, rows and output to the client; the model gets the summary only. One audit event."""
    stream = ctx.ui.tool(call_id)
    consumer = StreamConsumer(ctx.nc, ctx.subjects, idle_timeout_s=ctx.stream_idle_s)
    result = QueryResult()
    audit = ctx.audit(source, sql)
    outcome, error = "cancelled", None  # until it ends otherwise: a turn cut off mid-query
    try:
        try:
            connection = ctx.connections.get(source or "")
            if connection is not None:  # the user's own database: theirs to use, as its own account
                audit.source, audit.role = source, None
                await consumer.start(sql, None, connection=connection)
            else:
                grant = ctx.grant_for(source)
                audit.source, audit.role = grant.source, grant.role
                await consumer.start(sql, grant.source, caller=ctx.caller_for(grant))
            await relay(consumer, stream, result, ctx.alive)
            outcome = "ok"
        except ServiceError as exc:
            if exc.code == UNKNOWN_SOURCE:
                exc = unknown_source(audit.source)
            outcome, error = exc.code, exc
            metrics.TOOL_CALLS.labels(prompt.EXECUTE_QUERY, exc.code).inc()
            await stream.error(exc.message)
            return {"error": exc.message}
        except ConnectionResetError as exc:
            outcome = client_outcome(exc)
            raise
    finally:
        await consumer.close()
        audit.finish(outcome, result, error)
    metrics.TOOL_CALLS.labels(prompt.EXECUTE_QUERY, "ok").inc()
    if result.columns:
        ctx.last_query = QueryColumns(call_id, result.columns, result.preview)
    return prompt.query_summary(result.output())


async def _describe_schema(ctx: ToolContext, call_id: str, source: str | None, tables: list[str] | None) -> dict[str, Any]:
    stream = ctx.ui.tool(call_id)
    try:
        connection = ctx.connections.get(source or "")
        if connection is not None:
            reply = msgspec.to_builtins(await ctx.query.schema(source, tables, SCHEMA_TIMEOUT_S, connection=connection))
        else:
            grant = ctx.grant_for(source)
            reply = msgspec.to_builtins(await ctx.query.schema(grant.source, tables, SCHEMA_TIMEOUT_S, role=grant.role))
    except ServiceError as exc:
        metrics.TOOL_CALLS.labels(prompt.DESCRIBE_SCHEMA, exc.code).inc()
        await stream.error(exc.message)
        return {"error": exc.message}
    metrics.TOOL_CALLS.labels(prompt.DESCRIBE_SCHEMA, "ok").inc()
    await stream.output(reply, preliminary=False)
    return prompt.schema_summary(reply)


async def _search_schema(ctx: ToolContext, call_id: str, query: str, source: str | None) -> dict[str, Any]:
    stream = ctx.ui.tool(call_id)
    try:
        connection = ctx.connections.get(source or "")
        if connection is not None:  # the user's own database, as describe_schema reads it
            reply = await ctx.query.search(query, source, search.SEARCH_LIMIT, connection=connection)
        else:
            grant = ctx.grant_for(source)
            reply = await ctx.query.search(query, grant.source, search.SEARCH_LIMIT, role=grant.role)
    except ServiceError as exc:
        metrics.TOOL_CALLS.labels(prompt.SEARCH_SCHEMA, exc.code).inc()
        await stream.error(exc.message)
        return {"error": exc.message}
    metrics.TOOL_CALLS.labels(prompt.SEARCH_SCHEMA, "ok").inc()
    result = search.render(reply, ctx.search_max_chars)
    await stream.output(result, preliminary=False)
    return result
