"""`show_chart`: the model proposes a chart of a query's result; the gateway checks it against that result's columns.

A proposal names a type and two columns of the latest `execute_query` result of the turn. It is
accepted only when both columns exist and Y is numeric (by its type, or, for engines that type
expressions loosely, by every non-NULL preview value being a number). An invalid proposal is a
ValueError whose message the model gets as a tool error; the page never draws it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

CHART_TYPES = ("bar", "line", "area", "scatter", "pie")
MAX_TITLE_CHARS = 200
_NUMERIC_TYPE = re.compile(r"int|float|double|real|numeric|decimal|number|money|serial", re.IGNORECASE)


@dataclass(frozen=True)
class QueryColumns:
    """What the chart check needs of one finished query: its call id, columns and preview."""

    call_id: str
    columns: list[dict[str, Any]]
    preview: list[Any]


def _numeric(index: int, column: dict[str, Any], preview: list[Any]) -> bool:
    if _NUMERIC_TYPE.search(str(column.get("type") or "")):
        return True
    values = [row[index] for row in preview if isinstance(row, list) and index < len(row) and row[index] is not None]
    return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def check_chart(args: dict[str, Any], query: QueryColumns | None) -> dict[str, Any]:
    """The chart the page draws: {type, x, y, title, query (the call id), columns}; ValueError naming what is wrong."""
    if query is None:
        raise ValueError("there is no query result in this answer to chart: call execute_query first, then show_chart with its column names")
    kind = args.get("type")
    if kind not in CHART_TYPES:
        raise ValueError(f"'type' must be one of {', '.join(CHART_TYPES)}")
    names = [str(c.get("name")) for c in query.columns]
    listed = ", ".join(names)
    x, y = args.get("x"), args.get("y")
    if not isinstance(x, str) or x not in names:
        raise ValueError(f"'x' must name a column of the last query's result ({listed})")
    if not isinstance(y, str) or y not in names:
        raise ValueError(f"'y' must name a column of the last query's result ({listed})")
    index = names.index(y)
    if not _numeric(index, query.columns[index], query.preview):
        raise ValueError(f"'y' must be a numeric column; {y!r} is {query.columns[index].get('type') or 'not numeric'}")
    title = args.get("title", "")
    if title is None:
        title = ""
    if not isinstance(title, str) or len(title) > MAX_TITLE_CHARS:
        raise ValueError(f"'title' must be a string of at most {MAX_TITLE_CHARS} characters")
    return {"type": kind, "x": x, "y": y, "title": title, "query": query.call_id, "columns": query.columns}
