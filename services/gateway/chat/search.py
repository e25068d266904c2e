"""search_schema for the model: the found tables (`query.schema.search`, asked through clients.QueryClient) as text within LLM_SCHEMA_SEARCH_MAX_CHARS.

The query service ranks the tables (services/query/search.py); here they are written as the
model reads them best, one block per table (columns, types, keys, comments, sampled
values), then the join paths, best table first, dropping the least relevant tables until
the whole JSON result fits the budget.
"""

from __future__ import annotations

from typing import Any

import orjson

from shared.contracts import SEARCH_QUERY_MAX_CHARS, SchemaSearchReply, SearchTable

SEARCH_LIMIT = 10
"""Tables asked of the query service; the budget may keep fewer."""
MIN_BUDGET = 500
MAX_QUERY_CHARS = SEARCH_QUERY_MAX_CHARS


def _table_block(table: SearchTable) -> str:
    head = table.name
    if table.row_estimate is not None:
        head += f" (~{table.row_estimate} rows)"
    if table.comment:
        head += f" -- {table.comment}"
    references = {column: f"{fk.references.table}.{target}" for fk in table.foreign_keys for column, target in zip(fk.columns, fk.references.columns)}
    lines = [head]
    for c in table.columns:
        line = f"  {c.name} {c.type}".rstrip()
        if c.primary_key:
            line += " PK"
        if c.name in references:
            line += f" -> {references[c.name]}"
        if c.comment:
            line += f" -- {c.comment}"
        if c.values:
            line += " [values: " + ", ".join("'" + v.replace("'", "''") + "'" for v in c.values) + "]"
        lines.append(line)
    return "\n".join(lines)


def render(reply: SchemaSearchReply, max_chars: int) -> dict[str, Any]:
    """What the model gets: the best tables whose JSON, with their join paths, is at most `max_chars` long."""
    budget = max(max_chars, MIN_BUDGET)
    base: dict[str, Any] = {"source": reply.source, "dialect": reply.dialect, "tables": [], "schema": ""}
    if reply.note:
        base["note"] = reply.note
    best = base
    blocks: list[str] = []
    for table in reply.tables:
        block = _table_block(table)
        candidate = _result(base, reply, blocks + [block], [t.name for t in reply.tables[: len(blocks) + 1]])
        if _size(candidate) > budget:
            if not blocks:  # even the best table alone is too long: its first columns
                best = _cut_first(base, reply, block, budget)
            break
        blocks.append(block)
        best = candidate
    if len(best["tables"]) < len(reply.tables):
        left = [t.name for t in reply.tables[len(best["tables"]) :]]
        best = {**best, "more": f"also relevant, left out for length (LLM_SCHEMA_SEARCH_MAX_CHARS): {', '.join(left)}"}
        if _size(best) > budget:
            best.pop("more")
    return best


def _result(base: dict[str, Any], reply: SchemaSearchReply, blocks: list[str], names: list[str]) -> dict[str, Any]:
    shown = set(names)
    joins = [j for j in reply.joins if j.tables[0] in shown and j.tables[-1] in shown]
    text = "\n\n".join(blocks)
    if joins:
        text += "\n\nJoins:\n" + "\n".join(f"  {' -> '.join(j.tables)}: {' AND '.join(j.on)}" for j in joins)
    return {**base, "tables": names, "schema": text}


def _cut_first(base: dict[str, Any], reply: SchemaSearchReply, block: str, budget: int) -> dict[str, Any]:
    lines = block.split("\n")
    while len(lines) > 1:
        lines.pop()
        candidate = _result(base, reply, ["\n".join(lines) + "\n  … more columns: describe_schema this table"], [reply.tables[0].name])
        if _size(candidate) <= budget:
            return candidate
    return {**base, "tables": [reply.tables[0].name], "schema": lines[0][: budget // 2]}


def _size(result: dict[str, Any]) -> int:
    return len(orjson.dumps(result))
