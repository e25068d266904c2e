"""describe_schema (`query.schema`): what tables a source has, from the database's own catalog, cached and bounded.

Without `tables` the reply is an overview (every readable table with its columns' names
and types); with `tables` it holds details (nullable, primary key, foreign keys, a row
estimate). Each engine reads its catalog through its read-only query path, so a source
lists only what its role may read. Replies are cached per source and request for
QUERY_SCHEMA_CACHE_S, and cut to QUERY_SCHEMA_MAX_TABLES tables and
QUERY_SCHEMA_MAX_COLUMNS columns, with `truncated` and a `note` saying so.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Sequence

import msgspec
import structlog
from nats.aio.msg import Msg

from services.query.config import SchemaConfig
from services.query.connections.pools import UserPools
from services.query.engines import Engine, Sources
from services.query.engines.catalog import Catalog, Describes
from shared.contracts import Caller, ConnectionRef, SchemaColumn, SchemaReply, SchemaRequest, SchemaTable
from shared.errors import QUERY_TIMEOUT, UNAVAILABLE, ServiceError

log = structlog.get_logger(__name__)

CACHE_MAX_ENTRIES = 256
"""Cached replies kept at most (the oldest goes first)."""


def overview(table: SchemaTable) -> SchemaTable:
    return SchemaTable(name=table.name, columns=[SchemaColumn(name=c.name, type=c.type) for c in table.columns])


def bound(catalog: Catalog, details: bool, config: SchemaConfig) -> tuple[list[SchemaTable], bool, str | None]:
    """Cut the catalog to the column budget, and say what was left out (and what was not found)."""
    tables: list[SchemaTable] = []
    budget = config.max_columns
    cut_columns = 0
    for table in catalog.tables[: config.max_tables]:
        if budget <= 0:
            break
        if len(table.columns) > budget:
            cut_columns += len(table.columns) - budget
            table = msgspec.structs.replace(table, columns=table.columns[:budget])
        budget -= len(table.columns)
        tables.append(table if details else overview(table))
    notes = []
    shown_of = len(catalog.tables) if details else catalog.total
    truncated = len(tables) < shown_of or cut_columns > 0
    if len(tables) < shown_of:
        hint = "" if details else "; ask for specific tables to see the others"
        limit = f"QUERY_SCHEMA_MAX_TABLES={config.max_tables}, QUERY_SCHEMA_MAX_COLUMNS={config.max_columns}"
        notes.append(f"showing {len(tables)} of {shown_of} tables ({limit}){hint}")
    if cut_columns:
        notes.append(f"{cut_columns} column(s) of {tables[-1].name} left out (QUERY_SCHEMA_MAX_COLUMNS={config.max_columns})")
    if catalog.unknown:
        notes.append("no readable table named " + ", ".join(repr(n) for n in catalog.unknown))
    return tables, truncated, "; ".join(notes) or None


_Key = tuple[str, str | None, tuple[str, ...] | None]
"""A description's cache key: source, role, the tables asked for (None: the overview)."""


class SchemaService:
    """Serves `query.schema`: one catalog read per source and request at a time, then cached."""

    def __init__(self, sources: Sources, config: SchemaConfig, pools: UserPools | None = None) -> None:
        self._sources = sources
        self._config = config
        self._pools = pools
        self._cache: OrderedDict[_Key, tuple[float, SchemaReply]] = OrderedDict()
        self._reading: dict[_Key, asyncio.Future[SchemaReply]] = {}

    async def describe(self, source: str | None, tables: Sequence[str] | None, role: str | None = None, connection: ConnectionRef | None = None) -> tuple[SchemaReply, bool]:
        """The reply for one request (as `role` sees the catalog; None: the source's account), and whether it came from the cache.

        `connection`: a user's own database, read each time as its own account (checked out, so it counts against the user's cap).
        """
        if connection is not None:
            if self._pools is None:
                raise ServiceError(UNAVAILABLE, "users' connections are not served here")
            engine = await self._pools.checkout(connection)
            try:
                return await self._read(engine, tuple(dict.fromkeys(tables)) if tables is not None else None, None), False
            finally:
                self._pools.checkin(engine)
        engine = self._sources.resolve(source)
        self._sources.check_caller(engine, Caller(role=role))
        key = (engine.name, role, tuple(dict.fromkeys(tables)) if tables is not None else None)
        cached = self._cache.get(key)
        if cached is not None and time.monotonic() < cached[0]:
            return cached[1], True
        reading = self._reading.get(key)
        if reading is None:  # concurrent callers of one key share one catalog read
            reading = asyncio.ensure_future(self._read(engine, key[2], role))
            self._reading[key] = reading
            reading.add_done_callback(lambda done: self._read_done(key, done))
        reply = await asyncio.shield(reading)
        if self._config.cache_s > 0:
            self._cache[key] = (time.monotonic() + self._config.cache_s, reply)
            self._cache.move_to_end(key)
            while len(self._cache) > CACHE_MAX_ENTRIES:
                self._cache.popitem(last=False)
        return reply, False

    def _read_done(self, key: _Key, done: asyncio.Future[SchemaReply]) -> None:
        self._reading.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved here: every caller still waiting gets it raised

    async def _read(self, engine: Engine, tables: tuple[str, ...] | None, role: str | None) -> SchemaReply:
        config = self._config
        if engine.owner is None:
            await self._sources.open(engine)
        if not isinstance(engine, Describes):
            raise ServiceError(UNAVAILABLE, f"source {engine.name!r} ({engine.dialect}) cannot describe its schema")
        try:
            async with asyncio.timeout(config.timeout_s):
                catalog = await engine.describe(tables, config.max_tables, config.timeout_s, Caller(role=role) if role else None)
        except TimeoutError:
            raise ServiceError(QUERY_TIMEOUT, f"reading the catalog of {engine.name!r} took longer than {config.timeout_s:g}s (QUERY_SCHEMA_TIMEOUT_S)") from None
        listed, truncated, note = bound(catalog, tables is not None, config)
        return SchemaReply(source=engine.name, dialect=engine.dialect, tables=listed, truncated=truncated, note=note)

    async def handle(self, request: SchemaRequest, _msg: Msg) -> SchemaReply:
        """The `query.schema` handler (shared.bus.Server decodes the request)."""
        started = time.monotonic()
        try:
            reply, cached = await self.describe(request.source, request.tables, request.caller.role if request.caller else None, request.connection)
        except ServiceError as exc:
            log.info("schema_failed", source=request.source, code=exc.code, message=exc.message, duration_ms=round((time.monotonic() - started) * 1000, 1))
            raise
        log.info(
            "schema_described",
            source=reply.source,
            tables=len(reply.tables),
            asked=len(request.tables) if request.tables is not None else None,
            truncated=reply.truncated,
            cached=cached,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )
        return reply
