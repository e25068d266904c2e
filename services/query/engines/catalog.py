"""What the engines' `describe` methods share: the tables a catalog lists, and picking the ones asked for.

Each engine reads its database's own catalog through its ordinary read-only query path
(the same connection, role and time limit as a user's query), so it lists only what that
role may read.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import msgspec

from shared.contracts import Caller, SchemaColumn, SchemaForeignKey, SchemaReference, SchemaTable


@dataclass(frozen=True)
class CatalogTable:
    """One table or view as the catalog lists it."""

    key: Any
    """How the engine finds it again (hashable): an oid, a (schema, name) pair, a rowid."""
    name: str
    """As shown: schema-qualified unless it is in the connection's default schema."""
    row_estimate: int | None = None
    view: bool = False
    comment: str | None = None


@dataclass
class Catalog:
    """What an engine's `describe` returns: full details of the tables picked."""

    tables: list[SchemaTable]
    total: int
    """How many tables the role can read in all."""
    unknown: list[str] = field(default_factory=list)
    """Requested names that match no readable table."""


@runtime_checkable
class Describes(Protocol):
    """An engine that can describe its source's tables (every engine in services/query/engines)."""

    async def describe(self, wanted: Sequence[str] | None, max_tables: int, timeout_s: float, caller: Caller | None = None) -> Catalog: ...


def pick(tables: Sequence[CatalogTable], wanted: Sequence[str] | None, max_tables: int) -> tuple[list[CatalogTable], list[str]]:
    """The first `max_tables` tables, or those named in `wanted` (exactly, else ignoring case); and the names left unmatched."""
    if wanted is None:
        return list(tables[:max_tables]), []
    by_name = {t.name: t for t in tables}
    by_folded: dict[str, list[CatalogTable]] = {}
    for t in tables:
        by_folded.setdefault(t.name.casefold(), []).append(t)
    chosen: dict[Hashable, CatalogTable] = {}
    unknown: list[str] = []
    for name in wanted:
        found = by_name.get(name)
        if found is None:
            candidates = by_folded.get(name.casefold(), [])
            found = candidates[0] if len(candidates) == 1 else None
        if found is None:
            unknown.append(name)
        else:
            chosen.setdefault(found.key, found)
    return list(chosen.values()), unknown  # at most as many as were asked for; the caller bounds them


def qualified(schema: str, name: str, home: bool) -> str:
    return name if home else f"{schema}.{name}"


def id_list(ids: Sequence[int]) -> str:
    """A SQL `IN (...)` list of catalog ids (oids, rowids): integers, so nothing to quote."""
    return "(" + ", ".join(str(int(i)) for i in ids) + ")" if ids else "(NULL)"


def assemble(
    picked: Sequence[CatalogTable],
    columns: Sequence[tuple[Any, str, str, bool, bool] | tuple[Any, str, str, bool, bool, str | None]],
    foreign_keys: Sequence[tuple[Any, list[str], str, list[str]]] = (),
) -> list[SchemaTable]:
    """Full details of `picked`, in its order, from catalog rows keyed by CatalogTable.key.

    `columns`: (key, name, type, nullable, primary key[, comment]); `foreign_keys`: (key, columns,
    referenced table as shown, referenced columns).
    """
    cols: dict[Hashable, list[SchemaColumn]] = {}
    for key, name, type_, nullable, primary_key, *rest in columns:
        comment = rest[0] if rest and rest[0] else msgspec.UNSET
        cols.setdefault(key, []).append(SchemaColumn(name=name, type=type_ or "", nullable=bool(nullable), primary_key=bool(primary_key), comment=comment))
    fks: dict[Hashable, list[SchemaForeignKey]] = {}
    for key, from_columns, table, to_columns in foreign_keys:
        fks.setdefault(key, []).append(SchemaForeignKey(columns=list(from_columns), references=SchemaReference(table=table, columns=list(to_columns))))
    return [SchemaTable(name=t.name, columns=cols.get(t.key, []), foreign_keys=fks.get(t.key, []), row_estimate=t.row_estimate, comment=t.comment or msgspec.UNSET) for t in picked]
