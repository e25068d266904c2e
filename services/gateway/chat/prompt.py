"""Everything the language model is told: the system prompt, the tools, and what a tool result looks like to it.

This is the one file to read to know what reaches the model. Rows never do: from a query
it gets only `query_summary()` (columns, at most PREVIEW_ROWS rows with long cells cut, the
row count and whether the result was truncated), whatever the browser received.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

PREVIEW_ROWS = 5
CELL_CHARS = 120
SCHEMA_TOOL_MAX_CHARS = 20_000

DIALECT_NAMES = {"postgres": "PostgreSQL", "mysql": "MySQL/MariaDB", "sqlite": "SQLite"}

EXECUTE_QUERY = "execute_query"
DESCRIBE_SCHEMA = "describe_schema"
SEARCH_SCHEMA = "search_schema"
SHOW_CHART = "show_chart"
GET_RECENT_QUERIES = "get_recent_queries"


def _function(name: str, description: str, properties: dict[str, Any], required: Sequence[str] = ()) -> dict[str, Any]:
    """One tool in the OpenAI `tools` format: a function whose parameters are an object of `properties`."""
    parameters: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = list(required)
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


# Plain JSON Schema only (no `additionalProperties`, no `strict`): Gemini's OpenAI endpoint refuses more.
TOOLS: list[dict[str, Any]] = [
    _function(
        EXECUTE_QUERY,
        "Run one read-only SQL statement (SELECT, WITH ... SELECT, EXPLAIN) on a source and get a summary of the result: "
        f"the columns, the first {PREVIEW_ROWS} rows, the row count and whether the result was cut at the row limit. "
        'The user sees every row in their SQL editor; you only see the summary. On failure you get {"error": message}: '
        "fix the SQL and try again.",
        {
            "sql": {"type": "string", "description": "One read-only statement in the source's SQL dialect."},
            "source": {"type": "string", "description": "The source to query; omit for the default source."},
        },
        required=["sql"],
    ),
    _function(
        DESCRIBE_SCHEMA,
        "Describe a source's schema. Without `tables`: every table with its columns and types. With `tables`: "
        "their columns (name, type, nullable, primary key), foreign keys and estimated row counts.",
        {
            "source": {"type": "string", "description": "The source to describe; omit for the default source."},
            "tables": {"type": "array", "items": {"type": "string"}, "description": "Table names to describe in detail."},
        },
    ),
    _function(
        SEARCH_SCHEMA,
        "Find the tables of a source that matter for a question, best first: each with its columns, types, keys, comments and, "
        "for columns of codes or categories, their values; then how the tables join along foreign keys. Use it before writing SQL "
        "when the schema is not listed in full here.",
        {
            "query": {"type": "string", "description": "The user's question, or keywords naming what the tables hold."},
            "source": {"type": "string", "description": "The source to search; omit for the default source."},
        },
        required=["query"],
    ),
    _function(
        SHOW_CHART,
        f"Show the user a chart of the last {EXECUTE_QUERY} result of this answer (the page draws it from every row). "
        "`x` and `y` are column names of that result; `y` must be numeric. An invalid proposal comes back as "
        '{"error": message} and is not drawn.',
        {
            "type": {"type": "string", "enum": ["bar", "line", "area", "scatter", "pie"], "description": "The kind of chart."},
            "x": {"type": "string", "description": "The column on the X axis (categories for bar and pie)."},
            "y": {"type": "string", "description": "The numeric column on the Y axis (summed per X value for bar and pie)."},
            "title": {"type": "string", "description": "A short title."},
        },
        required=["type", "x", "y"],
    ),
    _function(
        GET_RECENT_QUERIES,
        "The SQL the user ran most recently in their editor on a source, newest first (at most 50), with when each ran.",
        {
            "source": {"type": "string", "description": "The source; omit for the default source."},
            "limit": {"type": "integer", "description": "How many, 1 to 50 (default 10)."},
        },
    ),
]


def tools_for(own_sources: Sequence[str]) -> list[dict[str, Any]]:
    """TOOLS, with the user's own connections named in the `source` parameters (TOOLS itself when there are none)."""
    if not own_sources:
        return TOOLS
    named = ", ".join(own_sources)
    out = []
    for tool in TOOLS:
        if "source" not in tool["function"].get("parameters", {}).get("properties", {}):
            out.append(tool)
            continue
        function = dict(tool["function"])
        parameters = dict(function["parameters"])
        properties = dict(parameters["properties"])
        source = dict(properties["source"])
        source["description"] = f"{source['description']} The user's own databases are sources too: {named}."
        properties["source"] = source
        parameters["properties"] = properties
        function["parameters"] = parameters
        out.append({**tool, "function": function})
    return out


STEP_LIMIT_TEXT = (
    "I stopped here: this question took more than {steps} steps (queries and schema lookups) without a final answer. The results so far are above; ask a narrower question or continue from them."
)


def system_prompt(sources: Mapping[str, str], default: str, overview: Mapping[str, Any] | None, max_schema_chars: int, own: Mapping[str, str] | None = None) -> str:
    """The system message: the sources and their dialects (`own`: the user's own databases), the read-only rule, and the schema when small enough."""
    lines = [
        "You are DB Genie, an assistant that answers questions about the user's databases by writing and running SQL.",
        "",
        "Sources you can query (name: SQL dialect):",
    ]
    for name, dialect in sources.items():
        marker = " (default)" if name == default else ""
        lines.append(f"- {name}{marker}: {DIALECT_NAMES.get(dialect, dialect or 'unknown dialect')}")
    for name, dialect in (own or {}).items():
        marker = " (default)" if name == default else ""
        lines.append(f"- {name}{marker}: {DIALECT_NAMES.get(dialect, dialect or 'unknown dialect')}, the user's own database")
    lines += [
        "",
        "Rules:",
        "- Every statement must be read-only (SELECT, WITH ... SELECT, EXPLAIN) and written in the dialect of the source it runs on. Writes, DDL and several statements at once are refused.",
        f"- Use {DESCRIBE_SCHEMA} when you need tables or columns you do not know; never guess names.",
        f"- Use {EXECUTE_QUERY} to answer with data. You see the columns, up to {PREVIEW_ROWS} rows and the row count; "
        "the user sees every row in their SQL editor, so do not repeat the rows: summarise and explain.",
        "- If a query fails, read the error, fix the SQL and try again.",
        "- Answer concisely in the user's language.",
    ]
    schema = schema_overview(overview) if overview else ""
    if schema and len(schema) <= max_schema_chars:
        lines += ["", f"Schema of {overview.get('source', default) if overview else default} (table: column type, ...):", schema]
    elif overview is not None:
        lines += [
            "",
            f"The schema is too large to list here. Call {SEARCH_SCHEMA} with the question (or its keywords) first, to find the tables "
            f"that matter and how they join; call {DESCRIBE_SCHEMA} with table names for more detail. Never guess table names.",
        ]
    return "\n".join(lines)


def schema_overview(reply: Mapping[str, Any]) -> str:
    """A describe_schema reply as one line per table: `name: col type, col type`."""
    out = []
    for table in reply.get("tables") or ():
        columns = ", ".join(f"{c.get('name')} {c.get('type')}" for c in table.get("columns") or ())
        out.append(f"{table.get('name')}: {columns}")
    if reply.get("truncated"):
        out.append(f"(cut: {reply.get('note') or 'more tables exist'})")
    return "\n".join(out)


def cut_cell(value: Any) -> Any:
    if isinstance(value, str) and len(value) > CELL_CHARS:
        return value[:CELL_CHARS] + "…"
    if isinstance(value, (list, dict)):
        text = orjson.dumps(value).decode()
        return value if len(text) <= CELL_CHARS else text[:CELL_CHARS] + "…"
    return value


def query_summary(output: Any) -> dict[str, Any]:
    """What the model gets of an execute_query output, however much the output holds."""
    if not isinstance(output, Mapping):
        return {"error": "the query produced no result"}
    if "error" in output and "columns" not in output:
        return {"error": str(output["error"])}
    preview = output.get("preview")
    rows: Sequence[Any] = preview if isinstance(preview, list) else []
    row_count = output.get("row_count")
    return {
        "columns": output.get("columns") if isinstance(output.get("columns"), list) else [],
        "preview": [[cut_cell(v) for v in row] if isinstance(row, list) else cut_cell(row) for row in rows[:PREVIEW_ROWS]],
        "row_count": row_count if isinstance(row_count, int) else len(rows),
        "truncated": bool(output.get("truncated", False)),
    }


def schema_summary(output: Any) -> Any:
    """What the model gets of a describe_schema reply: the reply itself, cut to SCHEMA_TOOL_MAX_CHARS."""
    if not isinstance(output, Mapping):
        return {"error": "no schema"}
    text = orjson.dumps(output)
    if len(text) <= SCHEMA_TOOL_MAX_CHARS:
        return output
    tables = list(output.get("tables") or ())
    while tables and len(orjson.dumps({**output, "tables": tables})) > SCHEMA_TOOL_MAX_CHARS:
        tables.pop()
    return {**output, "tables": tables, "truncated": True, "note": f"cut to {len(tables)} tables; ask for specific tables"}


def chart_summary(chart: Any) -> dict[str, Any]:
    """What the model gets of a show_chart it made: that it is shown, and as what (the page has the rest)."""
    if not isinstance(chart, Mapping):
        return {"error": "no chart"}
    return {"shown": True, "type": chart.get("type"), "x": chart.get("x"), "y": chart.get("y")}


def tool_message(call_id: str, result: Any) -> dict[str, Any]:
    """A tool result as the model's `tool` message."""
    return {"role": "tool", "tool_call_id": call_id, "content": orjson.dumps(result).decode()}
