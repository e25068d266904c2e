"""SQLite through the stdlib driver in worker threads, on a handle that cannot write.

Read-only is enforced three times over: the file is opened with `mode=ro`, the handle has
`PRAGMA query_only=ON`, and an authorizer allows only reading (no ATTACH, no pragma that
sets a value, no write of any kind). A timer interrupts a query that runs past its time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgspec

from services.query.config import sqlite_path
from services.query.engines import catalog
from services.query.engines.base import Cursor, Engine, EngineSettings, shutting_down, timeout_message
from services.query.values import Column, RowEncoder
from services.query.wire import ByteLimits, cell_error, fetch_error, row_error
from shared.contracts import Caller
from shared.errors import QUERY_FAILED, QUERY_REFUSED, QUERY_TIMEOUT, UNAVAILABLE, ServiceError

_ALLOWED_ACTIONS = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE})
_DENIED_FUNCTIONS = frozenset({"load_extension", "writefile", "readfile", "edit", "fts3_tokenizer"})
_STORAGE_CLASS = {int: "INTEGER", float: "REAL", str: "TEXT", bytes: "BLOB"}


def _authorize(action: int, arg1: str | None, arg2: str | None, _db: str | None, _trigger: str | None) -> int:
    if action in _ALLOWED_ACTIONS:
        if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _DENIED_FUNCTIONS:
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and arg2 is None:
        return sqlite3.SQLITE_OK  # reading a pragma (e.g. pragma_table_info) is fine; setting one is not
    return sqlite3.SQLITE_DENY


class _Handle:
    """One read-only connection and its cursor, used from one worker thread at a time."""

    def __init__(self, path: Path, timeout_s: float, limits: ByteLimits | None = None) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self.limits = limits or ByteLimits()
        self.conn: sqlite3.Connection | None = None
        self.cursor: sqlite3.Cursor | None = None
        self.expired = False
        self.pending: concurrent.futures.Future[Any] | None = None

    def open(self) -> None:
        if not self.path.is_file():
            raise ServiceError(UNAVAILABLE, f"the SQLite database file {self.path} does not exist")
        uri = f"file:{quote(str(self.path))}?mode=ro"
        self.conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
        self.conn.execute("PRAGMA query_only = ON")
        # SQLite itself refuses to make or read a string, blob or stored row longer than this.
        self.conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, self.limits.max_row_bytes)
        self.conn.set_authorizer(_authorize)

    def execute(self, sql: str) -> list[str]:
        assert self.conn is not None
        self.cursor = self.conn.execute(sql)
        return [d[0] for d in self.cursor.description or ()]

    def interrupt(self) -> None:
        if self.conn is not None:
            self.conn.interrupt()

    def expire(self) -> None:
        self.expired = True
        self.interrupt()

    def close(self) -> None:
        if self.cursor is not None:
            self.cursor.close()
        if self.conn is not None:
            self.conn.close()


class SqliteCursor(Cursor):
    def __init__(self, engine: SqliteEngine, handle: _Handle, names: list[str]) -> None:
        self._engine = engine
        self._handle = handle
        self._names = names
        self.columns = [Column(name, "NULL") for name in names]
        self._typed = False

    async def fetch(self, n: int) -> Sequence[Sequence[Any]]:
        rows, _ = await self._engine._run(self._handle, _fetch_bounded, self._handle, n, False)
        if not self._typed and rows:
            self.columns = [Column(name, _infer_type(rows, i)) for i, name in enumerate(self._names)]
            self._typed = True
        return rows

    async def fetch_chunks(self, n: int, encoder: RowEncoder, limit: int, offset: int) -> tuple[int, list[tuple[int, bytes]], bool]:
        # Encoding in the worker too leaves the event loop nothing to do but publish.
        def fetch_and_encode() -> tuple[int, list[tuple[int, bytes]], bool]:
            rows, finished = _fetch_bounded(self._handle, n, True)
            return len(rows), encoder.chunks(rows, limit, offset), finished

        return await self._engine._run(self._handle, fetch_and_encode)


def _fetch_bounded(handle: _Handle, n: int, by_bytes: bool) -> tuple[list[Any], bool]:
    """Up to `n` rows, each measured as it is read, and whether the result is exhausted.

    A value over QUERY_MAX_CELL_BYTES or a row over QUERY_MAX_ROW_BYTES ends the query before
    more is read. The fetch budget (FETCH_ROWS_AT_LIMIT rows at the limit) is never passed:
    `by_bytes`, the fetch stops, not finished, once one more row could go over it, so rows that
    suddenly grow far longer than the ones before them only make the fetch short; without it,
    going over the budget ends the query.
    """
    assert handle.cursor is not None
    limits = handle.limits
    # A row whose strings and blobs come to at most `plain` characters and bytes holds no value
    # over the cell limit, even as UTF-8 (4 bytes a character at most), and is within the row
    # limit; its size is then what it counts. Only a longer row is measured value by value.
    plain = min(limits.max_cell_bytes // 4, limits.max_row_bytes)
    # By bytes: stop once one more row (at most QUERY_MAX_ROW_BYTES) could pass the budget.
    stop = limits.max_fetch_bytes - limits.max_row_bytes if by_bytes else limits.max_fetch_bytes
    rows: list[Any] = []
    append = rows.append
    total = 0
    # A row's MessagePack form is at least as long as its strings (as UTF-8) and blobs, so its
    # length stands in for their sum: one C call per row, written into one reused buffer
    # (about a third of a Python loop over the values; docs/benchmarks.md).
    measure, scratch = msgspec.msgpack.Encoder().encode_into, bytearray()
    # One row at a time (never a batch of rows unmeasured), with as little work per row as can be:
    # this loop is most of the query service's own CPU for a long result (docs/benchmarks.md).
    for row in islice(handle.cursor, n):
        try:
            measure(row, scratch)
        except (TypeError, ValueError, OverflowError):  # not a SQLite value: measured value by value
            size = _row_size(row, limits)
        else:
            size = len(scratch)
            if size > plain:
                size = _row_size(row, limits)
                scratch = bytearray()  # let a long row's buffer go
        total += size
        if total > stop:
            if not by_bytes:
                raise fetch_error(limits.max_fetch_bytes, limits)
            append(row)
            return rows, False
        append(row)
    return rows, len(rows) < n


def _row_size(row: Sequence[Any], limits: ByteLimits) -> int:
    """The bytes of a row's strings (as UTF-8 where that could matter) and blobs; raises over the cell or row limit."""
    cell_limit = limits.max_cell_bytes
    size = 0
    for value in row:
        kind = type(value)
        if kind is str or kind is bytes:
            length = len(value)
            if kind is str and length * 4 > cell_limit and not value.isascii():
                length = len(value.encode())
            if length > cell_limit:
                raise cell_error(length, limits)
            size += length
    if size > limits.max_row_bytes:
        raise row_error(size, limits)
    return size


def _infer_type(rows: Sequence[Sequence[Any]], index: int) -> str:
    # Python's sqlite3 does not expose declared types; report the storage class of the
    # first non-NULL value in the first batch.
    for row in rows:
        value = row[index]
        if value is not None:
            return _STORAGE_CLASS.get(type(value), "TEXT")
    return "NULL"


class SqliteEngine(Engine):
    """A SQLite file, read through stdlib sqlite3 in a pool of worker threads."""

    dialect = "sqlite"

    def __init__(self, name: str, url: str, settings: EngineSettings) -> None:
        super().__init__(name, url, settings)
        self.path = Path(sqlite_path(url)).resolve()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._slots = asyncio.Semaphore(settings.pool_size)
        self._handles: set[_Handle] = set()

    async def open(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=self.settings.pool_size, thread_name_prefix=f"sqlite-{self.name}")

    async def close(self) -> None:
        for handle in list(self._handles):
            handle.interrupt()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def _run(self, handle: _Handle, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn` in a worker; if this task is cancelled meanwhile, interrupt SQLite."""
        if self._executor is None:
            raise shutting_down()
        future = self._executor.submit(fn, *args)
        handle.pending = future
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            handle.interrupt()
            raise
        except sqlite3.Error as exc:
            raise _error(exc, handle) from None

    async def _finish(self, handle: _Handle) -> None:
        """Wait for the worker to let go of the handle, then close it there."""
        pending = handle.pending
        if pending is not None and not pending.done():
            handle.interrupt()
            await asyncio.wait([asyncio.wrap_future(pending)])
        if self._executor is not None:
            await asyncio.wait([asyncio.wrap_future(self._executor.submit(handle.close))])
        else:
            handle.close()

    @asynccontextmanager
    async def query(self, sql: str, timeout_s: float, caller: Caller | None = None) -> AsyncIterator[Cursor]:
        loop = asyncio.get_running_loop()
        async with self._slots:
            handle = _Handle(self.path, timeout_s, self.settings.limits)
            self._handles.add(handle)
            timer = loop.call_later(timeout_s, handle.expire)
            try:
                await self._run(handle, handle.open)
                names = await self._run(handle, handle.execute, sql)
                yield SqliteCursor(self, handle, names)
            finally:
                timer.cancel()
                self._handles.discard(handle)
                await asyncio.shield(self._finish(handle))

    async def describe(self, wanted: Sequence[str] | None, max_tables: int, timeout_s: float, caller: Caller | None = None) -> catalog.Catalog:
        """Tables (all, up to `max_tables`, or those `wanted`) from sqlite_master and the table_info pragmas.

        Read on a query's handle (read-only file, query_only, the query authorizer plus these
        two pragmas, which only describe a table), in one worker call, under `timeout_s`.
        SQLite keeps no row estimate: asked-for tables are counted in a file of at most
        COUNT_ROWS_MAX_BYTES, and have none otherwise.
        """
        count_rows = wanted is not None and self.path.is_file() and self.path.stat().st_size <= COUNT_ROWS_MAX_BYTES
        # A query's own handle (opened, timed and closed as for any query), then the catalog reads on it.
        async with self.query("SELECT 1", timeout_s) as cursor:
            assert isinstance(cursor, SqliteCursor)
            handle = cursor._handle
            return await self._run(handle, _read_catalog, handle, wanted, max_tables, count_rows)


COUNT_ROWS_MAX_BYTES = 16 * 1024 * 1024
"""`describe` counts the rows of asked-for tables only in a SQLite file at most this big."""
_CATALOG_PRAGMAS = frozenset({"table_info", "foreign_key_list"})
# The whole file is readable, so every table and view is listed.
_LITE_TABLES = "SELECT rowid, name, type, sql FROM sqlite_master WHERE type IN ('table', 'view') AND substr(name, 1, 7) <> 'sqlite_' ORDER BY name"
_COMMENTED_LINE = re.compile(r"^\s*[`\"\[]?([A-Za-z_][\w$]*)")
_NOT_COLUMNS = frozenset({"PRIMARY", "FOREIGN", "UNIQUE", "CHECK", "CONSTRAINT"})


def sql_comments(sql: str | None) -> tuple[str | None, dict[str, str]]:
    """SQLite keeps no comments in its catalog, but keeps the CREATE statement as written: its `--` comments.

    A comment on the CREATE line, or on lines of their own before the first column, is the
    table's; one at the end of a column's line is that column's.
    """
    table: list[str] = []
    columns: dict[str, str] = {}
    for number, line in enumerate((sql or "").splitlines()):
        code, dashes, comment = line.partition("--")
        comment = comment.strip()
        if not dashes or not comment:
            continue
        match = _COMMENTED_LINE.match(code)
        if number == 0 or (not code.strip() and not columns):
            table.append(comment)
        elif match and match.group(1).upper() not in _NOT_COLUMNS:
            columns[match.group(1)] = comment
    return (" ".join(table) or None), columns


def _authorize_catalog(action: int, arg1: str | None, arg2: str | None, db: str | None, trigger: str | None) -> int:
    if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() in _CATALOG_PRAGMAS:
        return sqlite3.SQLITE_OK  # describing a table reads the schema only
    return _authorize(action, arg1, arg2, db, trigger)


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _read_catalog(handle: _Handle, wanted: Sequence[str] | None, max_tables: int, count_rows: bool) -> catalog.Catalog:
    """`describe`'s catalog reads, in the worker thread, on the handle's read-only connection."""
    conn = handle.conn
    assert conn is not None
    conn.set_authorizer(_authorize_catalog)
    listed = []
    column_comments: dict[int, dict[str, str]] = {}
    for rowid, name, kind, sql in conn.execute(_LITE_TABLES):
        table_comment, column_comments[rowid] = sql_comments(sql)
        listed.append(catalog.CatalogTable(rowid, name, None, kind == "view", table_comment))
    picked, unknown = catalog.pick(listed, wanted, max_tables)

    def table_info(table: str) -> list[Any]:
        return conn.execute(f"PRAGMA table_info({_identifier(table)})").fetchall()

    columns = []
    for t in picked:
        for _cid, name, type_, notnull, _default, pk in table_info(t.name):
            # An INTEGER PRIMARY KEY is the rowid, which is never NULL.
            nullable = not notnull and not (pk and type_.upper() == "INTEGER")
            columns.append((t.key, name, type_, nullable, pk > 0, column_comments[t.key].get(name)))
    foreign_keys: list[tuple[Any, list[str], str, list[str]]] = []
    if wanted is not None:
        for t in picked:
            groups: dict[int, tuple[str, list[str], list[str | None]]] = {}
            for fk_id, _seq, table, from_column, to_column, *_ in conn.execute(f"PRAGMA foreign_key_list({_identifier(t.name)})"):
                entry = groups.setdefault(fk_id, (table, [], []))
                entry[1].append(from_column)
                entry[2].append(to_column)
            for table, from_columns, to_columns in groups.values():
                # REFERENCES t without columns means t's primary key.
                resolved = [c for c in to_columns if c is not None] or [row[1] for row in sorted(table_info(table), key=lambda r: r[5]) if row[5]]
                foreign_keys.append((t.key, from_columns, table, resolved))
        if count_rows:
            picked = [t if t.view else dataclasses.replace(t, row_estimate=conn.execute(f"SELECT count(*) FROM {_identifier(t.name)}").fetchone()[0]) for t in picked]
    return catalog.Catalog(catalog.assemble(picked, columns, foreign_keys), len(listed), unknown)


def _error(exc: sqlite3.Error, handle: _Handle) -> ServiceError:
    message = str(exc) or type(exc).__name__
    if isinstance(exc, sqlite3.OperationalError) and message == "interrupted":
        if handle.expired:
            return ServiceError(QUERY_TIMEOUT, timeout_message(handle.timeout_s))
        return ServiceError(QUERY_FAILED, "the query was interrupted")
    if "string or blob too big" in message:
        return ServiceError(
            QUERY_FAILED,
            f"a value or a stored row is over the {handle.limits.max_row_bytes}-byte limit per row (QUERY_MAX_ROW_BYTES); SQLite said: {message}",
        )
    if "not authorized" in message or "readonly" in message or "read-only" in message:
        return ServiceError(QUERY_REFUSED, f"SQLite refused the statement (read-only source): {message}")
    if isinstance(exc, sqlite3.OperationalError) and "unable to open" in message:
        return ServiceError(UNAVAILABLE, f"cannot open the SQLite database {handle.path}: {message}")
    return ServiceError(QUERY_FAILED, message)
