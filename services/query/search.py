"""search_schema (`query.schema.search`): the tables of a source most relevant to a question, from a full-text index per source.

The index is SQLite FTS5 (the standard library's sqlite3) in memory, one per source: a
document per table holding its name and its columns' names split into words (snake_case and
camelCase), its comments, and a few distinct values of its low-cardinality text columns. A
search ranks the documents with bm25, then lifts the tables joined by a foreign key to the
best hits (a bridge table between two hits the most), and returns the tables with the
foreign-key join paths between them.

Values are sampled as a user's query is run: each statement passes the read-only guard
with the source's function policy and runs under QUERY_TIMEOUT_S, as the reader the search
is for. An index is kept per source and database role (ACCESS_POLICY, docs/access.md): a
caller with a role gets the index whose catalog was read, and whose values were sampled, as
that role, so it finds only tables (and shows only values) the role may read; a caller
without one gets the source account's.
A source's first search waits only for its catalog (a first index without values); the
full index replaces it once the values are sampled. An index is rebuilt when it is older
than QUERY_SCHEMA_CACHE_S, as the describe_schema cache is; until the new one is built,
searches use the old one. A rebuild samples only the
tables that are new or changed, for VALUES_REFRESH_S; then every table again. An index of
INDEX_MEMORY_BOUND bytes holds 5,000 tables of a dozen columns (tests/test_schema_search.py
checks it, bench/search.py times it).

A user's own connection (docs/connections.md) is searched as describe_schema describes it:
only its owner's requests reach it (UserPools checks out its pool for that owner first), and
its index is read and sampled as the connection's own account. Its index lives no longer
than its pool (it is dropped when the connection is changed or deleted, and when the pool
closes); at most QUERY_SCHEMA_CONNECTION_INDEXES are kept, the least recently used dropped
first, and as many built at once.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import msgspec
import structlog
from nats.aio.msg import Msg

from services.query.config import SchemaConfig, SearchConfig
from services.query.connections.pools import UserPools
from services.query.engines import Engine, Sources
from services.query.engines.base import shutting_down
from services.query.engines.catalog import Describes
from services.query.guard import FunctionName, FunctionPolicy, check_read_only
from shared.contracts import Caller, ConnectionRef, JoinPath, SchemaSearchReply, SchemaSearchRequest, SchemaTable, SearchColumn, SearchTable
from shared.errors import NOT_FOUND, QUERY_TIMEOUT, UNAVAILABLE, ServiceError
from shared.words import terms, words

log = structlog.get_logger(__name__)

INDEX_MEMORY_BOUND = 48 * 1024 * 1024
"""What an index of 5,000 tables of 12 columns each (4 of them categories with their values) may take: its SQLite pages and its Python objects."""
SAMPLE_ROWS = 1000
"""Values are sampled from a column's first rows only, so that a sample never reads a whole big table."""
MAX_VALUE_CHARS = 60
"""A column with a longer value is not a column of codes or categories: its values are not kept."""
SAMPLE_CONCURRENCY = 3
"""Tables sampled at once by one index build (fewer than a source's pool of connections, so users' queries still get one)."""
VALUES_REFRESH_S = 600.0
"""Sampled values are kept across index rebuilds (every QUERY_SCHEMA_CACHE_S) for this long, for tables whose text columns did not change."""
CANDIDATES = 40
"""Full-text hits ranked before the foreign-key expansion."""
EXPANDED_FROM = 8
"""The best hits whose foreign-key neighbours are lifted."""
NEIGHBOUR_WEIGHT = 0.35
"""A neighbour's lift, as a share of the hit's own (normalised) score, per hit it joins."""
MAX_JOIN_EDGES = 3
"""Join paths longer than this (through tables not found) are not given."""
# Field weights of bm25: table name, column names, comments, values.
_WEIGHTS = (10.0, 3.0, 2.0, 1.5)
IndexKey = tuple[str, str | None] | ConnectionRef
"""An index's key: the source and the database role it was read as (None: the source's account), or a user's own connection."""
_TEXT_TYPE = re.compile(r"char|text|string|enum|clob|name", re.IGNORECASE)


def _log_fields(key: IndexKey) -> dict[str, str | None]:
    """What a log line says of an index: a user's connection by its id only (never its name or host)."""
    if isinstance(key, ConnectionRef):
        return {"connection": key.id}
    return {"source": key[0], "role": key[1]}


def _is_text(type_: str) -> bool:
    return bool(_TEXT_TYPE.search(type_))


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(SearchTable)


@dataclass
class _Edge:
    to: int
    on: str


@dataclass
class SchemaIndex:
    """One source's index: the FTS5 documents and the tables' details in SQLite, the foreign-key graph in Python."""

    source: str
    dialect: str
    db: sqlite3.Connection
    ids: dict[str, int]
    names: list[str]
    graph: list[list[_Edge]]
    total: int
    built: float = field(default_factory=time.monotonic)

    @classmethod
    def build(cls, source: str, dialect: str, tables: Sequence[SchemaTable], values: Mapping[tuple[str, str], Sequence[str]], total: int | None = None) -> SchemaIndex:
        """Index `tables` (details: columns, comments, foreign keys) with the sampled `values` by (table, column)."""
        db = sqlite3.connect(":memory:", check_same_thread=False)
        db.execute("PRAGMA cache_size = -2048")  # a page cache of 2 MiB: the database itself is in memory
        db.execute("CREATE VIRTUAL TABLE doc USING fts5(name, columns, comments, vals, tokenize = 'porter unicode61')")
        db.execute("CREATE TABLE detail (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
        ids = {t.name: i for i, t in enumerate(tables)}
        graph: list[list[_Edge]] = [[] for _ in tables]
        docs, details = [], []
        for i, table in enumerate(tables):
            columns = []
            for c in table.columns:
                kept = list(values.get((table.name, c.name), ()))
                columns.append(SearchColumn(name=c.name, type=c.type, primary_key=c.primary_key is True, comment=c.comment or None, values=kept))
            fks = table.foreign_keys or []
            for fk in fks:
                target = ids.get(fk.references.table)
                if target is None or target == i:
                    continue
                on = " AND ".join(f"{table.name}.{a} = {fk.references.table}.{b}" for a, b in zip(fk.columns, fk.references.columns))
                graph[i].append(_Edge(target, on))
                graph[target].append(_Edge(i, on))
            row_estimate = table.row_estimate if isinstance(table.row_estimate, int) else None
            detail = SearchTable(name=table.name, score=0.0, columns=columns, foreign_keys=fks, comment=table.comment or None, row_estimate=row_estimate)
            details.append((i, _encoder.encode(detail)))
            docs.append(
                (
                    i,
                    " ".join(words(table.name)),
                    " ".join(w for c in table.columns for w in words(c.name)),
                    " ".join([table.comment or ""] + [c.comment or "" for c in table.columns]),
                    " ".join(v for c in columns for v in c.values),
                )
            )
        with db:
            db.executemany("INSERT INTO doc (rowid, name, columns, comments, vals) VALUES (?, ?, ?, ?, ?)", docs)
            db.executemany("INSERT INTO detail VALUES (?, ?)", details)
            db.execute("INSERT INTO doc (doc) VALUES ('optimize')")
        return cls(source, dialect, db, ids, [t.name for t in tables], graph, len(tables) if total is None else total)

    def close(self) -> None:
        self.db.close()

    def database_bytes(self) -> int:
        """The size of the index's SQLite database (in memory)."""
        pages = self.db.execute("PRAGMA page_count").fetchone()[0]
        return int(pages * self.db.execute("PRAGMA page_size").fetchone()[0])

    def rank(self, question: str, limit: int) -> list[tuple[int, float]]:
        """The `limit` best tables for `question` as (id, score), best first: bm25 hits lifted along foreign keys."""
        wanted = terms(question)
        if not wanted:
            return []
        match = " OR ".join('"' + w.replace('"', '""') + '"' for w in wanted)
        weights = ", ".join(str(w) for w in _WEIGHTS)
        hits = self.db.execute(f"SELECT rowid, -bm25(doc, {weights}) AS score FROM doc WHERE doc MATCH ? ORDER BY score DESC LIMIT ?", (match, CANDIDATES)).fetchall()
        if not hits:
            return []
        best = hits[0][1] or 1.0
        scores = {rowid: score / best for rowid, score in hits}
        lifted = dict(scores)
        for rowid, _ in hits[:EXPANDED_FROM]:
            for neighbour in {edge.to for edge in self.graph[rowid]}:
                lifted[neighbour] = lifted.get(neighbour, 0.0) + NEIGHBOUR_WEIGHT * scores[rowid]
        return sorted(lifted.items(), key=lambda item: (-item[1], self.names[item[0]]))[:limit]

    def details(self, rowid: int, score: float) -> SearchTable:
        body = self.db.execute("SELECT body FROM detail WHERE id = ?", (rowid,)).fetchone()[0]
        return msgspec.structs.replace(_decoder.decode(body), score=round(score, 4))

    def joins(self, found: Sequence[int]) -> list[JoinPath]:
        """For each found table after the first, the shortest foreign-key path to one found before it."""
        paths = []
        for n, start in enumerate(found[1:], 1):
            path = self._path(start, set(found[:n]))
            if path is not None:
                paths.append(path)
        return paths

    def _path(self, start: int, targets: set[int]) -> JoinPath | None:
        previous: dict[int, tuple[int, str] | None] = {start: None}
        queue = deque([(start, 0)])
        while queue:
            node, depth = queue.popleft()
            if node in targets:
                tables, on = [self.names[node]], []
                while (step := previous[node]) is not None:
                    node, condition = step
                    tables.append(self.names[node])
                    on.append(condition)
                return JoinPath(tables=tables, on=on)
            if depth == MAX_JOIN_EDGES:
                continue
            for edge in self.graph[node]:
                if edge.to not in previous:
                    previous[edge.to] = (node, edge.on)
                    queue.append((edge.to, depth + 1))
        return None

    def search(self, question: str, limit: int) -> SchemaSearchReply:
        ranked = self.rank(question, limit)
        tables = [self.details(rowid, score) for rowid, score in ranked]
        note = None
        if self.total > len(self.names):
            note = f"searched {len(self.names)} of {self.total} tables (QUERY_SCHEMA_INDEX_MAX_TABLES)"
        if not ranked:
            note = "; ".join(filter(None, [note, "no table matches these words; try other words, or describe_schema for the list of tables"]))
        return SchemaSearchReply(source=self.source, dialect=self.dialect, tables=tables, joins=self.joins([rowid for rowid, _ in ranked]), indexed_tables=len(self.names), note=note)


def _quote(name: str, dialect: str) -> str:
    q = "`" if dialect == "mysql" else '"'
    return ".".join(q + part.replace(q, q + q) + q for part in name.split(".", 1))


def sample_sql(table: str, column: str, dialect: str, keep: int) -> str:
    """The distinct values of `column` among the first SAMPLE_ROWS rows of `table`, at most keep + 1 (so that one more says 'too many')."""
    c, t = _quote(column, dialect), _quote(table, dialect)
    return f"SELECT DISTINCT v FROM (SELECT {c} AS v FROM {t} LIMIT {SAMPLE_ROWS}) AS s WHERE v IS NOT NULL ORDER BY v LIMIT {keep + 1}"


@dataclass
class Samples:
    """The values sampled for a source: by (table, column), and which tables were sampled (by a hash of their text columns)."""

    values: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    tables: dict[str, int] = field(default_factory=dict)
    taken: float = field(default_factory=time.monotonic)

    def fresh(self, now: float) -> bool:
        return now < self.taken + VALUES_REFRESH_S


def _text_columns(table: SchemaTable) -> list[str]:
    return [c.name for c in table.columns if _is_text(c.type)]


async def sample_values(
    engine: Engine, tables: Iterable[SchemaTable], policy: FunctionPolicy, config: SearchConfig, timeout_s: float, previous: Samples | None = None, caller: Caller | None = None
) -> Samples:
    """The values of each low-cardinality text column, read as a user's query is (as `caller`'s role): guard first, then the engine, under `timeout_s`.

    A table `previous` sampled with the same text columns less than VALUES_REFRESH_S ago keeps
    its values; the others are sampled, until QUERY_SCHEMA_SAMPLE_S. A column the role cannot
    read, or whose sample fails, has none.
    """
    reuse = previous is not None and previous.fresh(time.monotonic())
    samples = Samples(taken=previous.taken if reuse and previous is not None else time.monotonic())
    if config.sample_values <= 0:
        return samples
    deadline = time.monotonic() + config.sample_s
    wanted: deque[tuple[str, list[str], int]] = deque()
    for table in tables:
        columns = _text_columns(table)
        signature = hash(tuple(columns))
        if reuse and previous is not None and previous.tables.get(table.name) == signature:
            samples.tables[table.name] = signature
            samples.values.update({(table.name, c): previous.values[(table.name, c)] for c in columns if (table.name, c) in previous.values})
        elif columns:
            wanted.append((table.name, columns, signature))

    async def sample(table: str, column: str) -> None:
        sql = sample_sql(table, column, engine.dialect, config.sample_values)
        try:
            check_read_only(sql, engine.dialect, policy)
            async with asyncio.timeout(timeout_s):
                async with engine.query(sql, timeout_s, caller) as cursor:
                    rows = await cursor.fetch(config.sample_values + 1)
        except (ServiceError, TimeoutError):
            return
        values = [row[0] for row in rows]
        if len(values) <= config.sample_values and all(isinstance(v, str) and 0 < len(v) <= MAX_VALUE_CHARS for v in values):
            samples.values[(table, column)] = values

    async def worker() -> None:
        while wanted and time.monotonic() < deadline:
            table, columns, signature = wanted.popleft()
            for column in columns:
                await sample(table, column)
            samples.tables[table] = signature  # a table cut off by the deadline is sampled next time

    await asyncio.gather(*(worker() for _ in range(SAMPLE_CONCURRENCY)))
    return samples


class SchemaSearch:
    """Serves `query.schema.search`: an index per source (and role) or user's connection, built on first use and rebuilt past QUERY_SCHEMA_CACHE_S."""

    def __init__(
        self,
        sources: Sources,
        config: SearchConfig,
        schema: SchemaConfig,
        allowed_functions: Mapping[str, frozenset[FunctionName]] | None = None,
        query_timeout_s: float = 30.0,
        pools: UserPools | None = None,
    ) -> None:
        self._sources = sources
        self._config = config
        self._schema = schema
        self._allowed = allowed_functions or {}
        self._query_timeout_s = query_timeout_s
        self._pools = pools
        self._indexes: dict[IndexKey, SchemaIndex] = {}
        self._samples: dict[IndexKey, Samples] = {}
        self._building: dict[IndexKey, asyncio.Task[SchemaIndex]] = {}
        self._first: dict[IndexKey, asyncio.Future[SchemaIndex]] = {}
        # Users' connections' indexes, least recently used first, and the builds of them running at once.
        self._connections: OrderedDict[ConnectionRef, None] = OrderedDict()
        self._connection_builds = asyncio.Semaphore(config.connection_indexes)
        if pools is not None:
            pools.on_close(self.forget)

    def _resolve(self, source: str | None, role: str | None) -> tuple[Engine, IndexKey]:
        engine = self._sources.resolve(source)
        self._sources.check_caller(engine, Caller(role=role))  # only a role ACCESS_POLICY names for this source
        return engine, (engine.name, role)

    async def index(self, source: str | None, role: str | None = None, connection: ConnectionRef | None = None) -> SchemaIndex:
        """The index of `source` as database role `role` reads it (None: the source's account), or of the user's own
        `connection`: the one there (a rebuild starts when it is old), else the first one.

        A source's first index comes as soon as its catalog is read, without values; the build
        goes on sampling them, and its full index replaces the first one when it is done.
        """
        if connection is not None:
            return await self._connection_index(connection)
        engine, key = self._resolve(source, role)
        return await self._serve(key, lambda: self._start(engine, key))

    async def _connection_index(self, ref: ConnectionRef) -> SchemaIndex:
        """A user's connection's index. Its pool is checked out for `ref`'s owner first: another user's id is not
        found, and nothing is opened or read for it. A build started here holds that checkout until it ends."""
        if self._pools is None:
            raise ServiceError(UNAVAILABLE, "users' connections are not served here")
        pools = self._pools
        engine = await pools.checkout(ref)
        handed = False

        def start() -> asyncio.Task[SchemaIndex]:
            nonlocal handed
            building = self._building.get(ref)
            if building is None:
                building = self._start(engine, ref)
                building.add_done_callback(lambda _: pools.checkin(engine))
                handed = True
            return building

        try:
            if ref in self._connections:
                self._connections.move_to_end(ref)
            return await self._serve(ref, start)
        finally:
            if not handed:
                pools.checkin(engine)

    async def _serve(self, key: IndexKey, start: Callable[[], asyncio.Task[SchemaIndex]]) -> SchemaIndex:
        current = self._indexes.get(key)
        if current is not None and time.monotonic() < current.built + self._schema.cache_s:
            return current
        building = start()
        if current is not None:
            return current  # served while the new one is built
        first = self._first.setdefault(key, asyncio.get_running_loop().create_future())
        await asyncio.wait((building, first), return_when=asyncio.FIRST_COMPLETED)  # neither is cancelled if this caller is
        if first.done() and not first.cancelled():
            return first.result()
        if not building.done():  # forget() let the waiters go: its build ends at its next step
            await asyncio.wait((building,))
        if building.cancelled():
            if isinstance(key, ConnectionRef):
                raise ServiceError(NOT_FOUND, "the connection was changed or deleted while its schema was read; ask again")
            raise shutting_down()
        return building.result()

    async def rebuild(self, source: str | None, role: str | None = None) -> SchemaIndex:
        """Build `source`'s index (as `role`) now, sharing a build under way, and use it from now on."""
        return await asyncio.shield(self._start(*self._resolve(source, role)))

    def _start(self, engine: Engine, key: IndexKey) -> asyncio.Task[SchemaIndex]:
        building = self._building.get(key)
        if building is None:
            building = asyncio.create_task(self._build(engine, key))
            self._building[key] = building
            building.add_done_callback(lambda done: self._built(key, done))
        return building

    def _built(self, key: IndexKey, done: asyncio.Task[SchemaIndex]) -> None:
        if self._building.get(key) is not done:  # forgotten while it ran (forget() let its waiters go): its index is not kept
            if not done.cancelled():
                done.exception()  # retrieved: a build that failed meanwhile is not reported as never retrieved
            return
        del self._building[key]
        first = self._first.pop(key, None)
        if first is not None and not first.done():
            first.cancel()  # the build ended before its first index: its callers get its result or error
        if done.cancelled():
            return
        if done.exception() is not None:
            log.warning("schema_index_failed", **_log_fields(key), error=getattr(done.exception(), "message", type(done.exception()).__name__))
            return
        self._keep(key, done.result())  # the old one is closed when the last search on it lets it go

    def _keep(self, key: IndexKey, index: SchemaIndex) -> None:
        self._indexes[key] = index
        if not isinstance(key, ConnectionRef):
            return
        self._connections[key] = None
        self._connections.move_to_end(key)
        while len(self._connections) > self._config.connection_indexes:
            oldest = next(iter(self._connections))
            self._drop(oldest)
            log.info("schema_index_dropped", connection=oldest.id, reason="QUERY_SCHEMA_CONNECTION_INDEXES")

    def _drop(self, key: ConnectionRef) -> None:
        """Let a user's connection's index go (a search still using it keeps it until it is done)."""
        self._connections.pop(key, None)
        self._indexes.pop(key, None)
        self._samples.pop(key, None)

    def forget(self, connection_id: str) -> None:
        """Drop a user's connection's index, and stop its build: its pool closed (changed, deleted, idle or evicted)."""
        for key in [k for k in (*self._indexes, *self._building) if isinstance(k, ConnectionRef) and k.id == connection_id]:
            self._drop(key)
            building = self._building.pop(key, None)
            if building is not None:
                building.cancel()
            first = self._first.pop(key, None)
            if first is not None and not first.done():
                first.cancel()

    async def _build(self, engine: Engine, key: IndexKey) -> SchemaIndex:
        if isinstance(key, ConnectionRef):
            async with self._connection_builds:
                return await self._build_now(engine, key, None, frozenset())
        return await self._build_now(engine, key, key[1], self._allowed.get(engine.name, frozenset()))

    async def _build_now(self, engine: Engine, key: IndexKey, role: str | None, allowed: frozenset[FunctionName]) -> SchemaIndex:
        started = time.monotonic()
        config = self._config
        caller = Caller(role=role) if role else None
        if engine.owner is None:
            await self._sources.open(engine)
        if not isinstance(engine, Describes):
            raise ServiceError(UNAVAILABLE, f"source {engine.name!r} ({engine.dialect}) cannot describe its schema")
        try:
            timeout_s = self._schema.timeout_s
            async with asyncio.timeout(timeout_s):
                listed = await engine.describe(None, config.max_tables, timeout_s, caller)
                names = [t.name for t in listed.tables]
                catalog = await engine.describe(names, config.max_tables, timeout_s, caller) if names else listed
        except TimeoutError:
            raise ServiceError(QUERY_TIMEOUT, f"reading the catalog of {engine.name!r} took longer than {self._schema.timeout_s:g}s (QUERY_SCHEMA_TIMEOUT_S)") from None
        if key not in self._indexes:  # searches need not wait for the values: a first index without them
            first = await asyncio.to_thread(SchemaIndex.build, engine.name, engine.dialect, catalog.tables, {}, listed.total)
            self._keep(key, first)
            waiting = self._first.pop(key, None)
            if waiting is not None and not waiting.done():
                waiting.set_result(first)
        policy = engine.function_policy(allowed)
        samples = await sample_values(engine, catalog.tables, policy, config, self._query_timeout_s, self._samples.get(key), caller)
        self._samples[key] = samples
        index = await asyncio.to_thread(SchemaIndex.build, engine.name, engine.dialect, catalog.tables, samples.values, listed.total)
        log.info(
            "schema_indexed",
            **_log_fields(key),
            tables=len(index.names),
            of=listed.total,
            sampled_columns=len(samples.values),
            bytes=index.database_bytes(),
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )
        return index

    async def close(self) -> None:
        for task in self._building.values():
            task.cancel()
        await asyncio.gather(*self._building.values(), return_exceptions=True)
        for index in self._indexes.values():
            index.close()
        self._indexes.clear()
        self._connections.clear()

    async def handle(self, request: SchemaSearchRequest, _msg: Msg) -> SchemaSearchReply:
        """The `query.schema.search` handler (shared.bus.Server decodes the request)."""
        started = time.monotonic()
        where: dict[str, str | None] = {"connection": request.connection.id} if request.connection is not None else {"source": request.source}
        try:
            index = await self.index(request.source, request.caller.role if request.caller else None, request.connection)
            reply = index.search(request.query, request.limit)  # milliseconds, even at 5,000 tables
        except ServiceError as exc:
            log.info("schema_search_failed", **where, code=exc.code, message=exc.message)
            raise
        log.info("schema_searched", **where, found=len(reply.tables), indexed=reply.indexed_tables, duration_ms=round((time.monotonic() - started) * 1000, 1))
        return reply
