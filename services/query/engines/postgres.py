"""PostgreSQL through an asyncpg pool: each query in a READ ONLY transaction, read with a server-side cursor.

asyncpg prepares the SQL with the extended protocol, which never runs more than one
statement, so nothing can follow the query to end the read-only transaction. The
server's statement_timeout stops a runaway step; a cancelled task makes asyncpg send a
cancel request, and the transaction is rolled back, which closes the portal. A connection
goes back to the pool only after DISCARD ALL.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import structlog

from services.query.engines import catalog
from services.query.engines.base import Cursor, Engine, EngineSettings, shutting_down, timeout_message
from services.query.engines.pg_codecs import decode_char, install_codecs
from services.query.guard import FunctionName, FunctionPolicy, PgCatalog, PgPolicy
from services.query.privileges import Account, postgres_account, postgres_role_findings
from services.query.values import Column
from services.query.wire import WireGuard, install
from shared.contracts import Caller
from shared.errors import QUERY_FAILED, QUERY_REFUSED, QUERY_TIMEOUT, UNAVAILABLE, ServiceError

log = structlog.get_logger(__name__)

APPLICATION_NAME = "dbgenie-query"
# Types whose values are never floats (so never NaN or infinity): the encoder skips that check.
_NO_FLOAT_TYPES = frozenset(
    {
        "int2", "int4", "int8", "oid", "numeric", "money", "bool", "text", "varchar", "bpchar", "char", "name",
        "date", "time", "timetz", "timestamp", "timestamptz", "interval", "uuid", "json", "jsonb", "bytea",
        "inet", "cidr", "macaddr", "xml", "bit", "varbit", "tsvector",
    }
)  # fmt: skip
# Types whose values (as this engine decodes them) orjson writes itself, exactly.
_NATIVE_TYPES = frozenset(
    {
        "int2", "int4", "int8", "oid", "float4", "float8", "bool", "text", "varchar", "bpchar", "name",
        "date", "timestamp", "timestamptz", "time", "timetz", "interval", "money", "xml", "bit", "varbit",
    }
)  # fmt: skip
# How the server words a cancel by statement_timeout (its other cancels are not our time limit).
_STATEMENT_TIMEOUT = "statement timeout"
_CONNECTION_ERRORS = (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError)


async def _reset_connection(conn: asyncpg.Connection) -> None:
    # Instead of asyncpg's default reset (advisory locks, cursors, LISTEN, settings):
    # DISCARD ALL also drops temporary tables, prepared statements, plans and sequence
    # state, so nothing a query did reaches the next one. The pool has already rolled
    # back; with statement_cache_size=0 asyncpg holds no statement DISCARD could drop.
    await conn.execute("DISCARD ALL")


async def act_as(conn: asyncpg.Connection, caller: Caller | None) -> None:
    """Inside the read-only transaction: SET LOCAL ROLE to the caller's role (so its table, column and
    row privileges apply), and the dbgenie.user_id / dbgenie.email settings that RLS policies read.
    All three end with the transaction (docs/access.md)."""
    if caller is None:
        return
    if caller.role is None:
        await conn.fetchrow("SELECT set_config('dbgenie.user_id', $1, true), set_config('dbgenie.email', $2, true)", caller.user_id, caller.email)
    else:
        await conn.fetchrow("SELECT set_config('dbgenie.user_id', $1, true), set_config('dbgenie.email', $2, true), set_config('role', $3, true)", caller.user_id, caller.email, caller.role)


async def _init_connection(conn: asyncpg.Connection) -> None:
    await install_codecs(conn)


class PostgresCursor(Cursor):
    def __init__(self, engine: PostgresEngine, statement: asyncpg.prepared_stmt.PreparedStatement, cursor: Any, timeout_s: float, guard: WireGuard) -> None:
        self._engine = engine
        self._cursor = cursor
        self._timeout_s = timeout_s
        self._guard = guard
        self.columns = [
            Column(
                a.name,
                a.type.name,
                convert=decode_char if a.type.name == "char" else None,
                floats=a.type.name not in _NO_FLOAT_TYPES,
                native=a.type.name in _NATIVE_TYPES,
            )
            for a in statement.get_attributes()
        ]

    async def fetch(self, n: int) -> Sequence[Sequence[Any]]:
        try:
            return await self._cursor.fetch(n)
        except (asyncpg.PostgresError, *_CONNECTION_ERRORS) as exc:
            raise self._guard.refusal or self._engine.error(exc, self._timeout_s) from None


class PostgresEngine(Engine):
    """A PostgreSQL source (postgresql:// or postgres:// URL)."""

    dialect = "postgres"

    def __init__(self, name: str, url: str, settings: EngineSettings) -> None:
        super().__init__(name, url, settings)
        if url.lower().startswith("postgres://"):
            url = "postgresql://" + url.split("://", 1)[1]
        self._connect: dict[str, Any] = {"dsn": url}
        self._pool: asyncpg.Pool | None = None
        # Read from pg_proc when the pool opens: the guard's allow rule asks it about every call.
        self.catalog: PgCatalog | None = None
        self._policy: PgPolicy | None = None
        # temp_file_limit is a superuser setting: a reader sets it only when granted SET on it (PostgreSQL 15+).
        self._temp_file_limit_settable = False

    async def open(self) -> None:
        self._pool = asyncpg.create_pool(
            **self._connect,
            min_size=0,
            max_size=self.settings.pool_size,
            statement_cache_size=0,  # every query is new SQL; do not keep them prepared
            max_inactive_connection_lifetime=300,
            timeout=self.settings.connect_timeout_s,
            init=_init_connection,
            reset=_reset_connection,
            server_settings={"application_name": APPLICATION_NAME, "IntervalStyle": "iso_8601"},
        )
        await self._pool
        try:
            async with self._pool.acquire() as conn:
                self.catalog = await PgCatalog.load(conn)
                self._temp_file_limit_settable = await _may_set_temp_file_limit(conn)
        except BaseException:
            await self.close()
            raise
        self._policy = None
        log.info("function_catalog_loaded", source=self.name, functions=len(self.catalog.functions))
        if not self._temp_file_limit_settable and self.settings.pg_temp_file_limit != "-1":
            log.warning(
                "pg_temp_file_limit_not_settable",
                source=self.name,
                hint="GRANT SET ON PARAMETER temp_file_limit TO the source's role (docs/query-account.md); until then a query's temporary files are bounded only by its time",
            )

    def connect_with(self, *, host: str, port: int, user: str, password: str, database: str, ssl: Any) -> None:
        """Connect with these arguments instead of the URL (a user's connection: `host` is the checked address)."""
        self._connect = {"host": host, "port": port, "user": user, "password": password, "database": database, "ssl": ssl}

    async def server_version(self) -> str:
        if self._pool is None:
            raise shutting_down()
        async with self._pool.acquire(timeout=self.settings.connect_timeout_s) as conn:
            return str(conn.get_settings().server_version)

    def function_policy(self, allowed: Iterable[FunctionName] = ()) -> FunctionPolicy:
        if self.catalog is None:
            return super().function_policy(allowed)
        wanted = frozenset(allowed)
        if self._policy is None or self._policy.allowed != wanted:
            self._policy = self.catalog.policy(wanted)
        return self._policy

    async def close(self) -> None:
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), self.settings.connect_timeout_s)
            except TimeoutError:
                self._pool.terminate()
            self._pool = None

    async def account(self) -> Account:
        if self._pool is None:
            raise shutting_down()
        async with self._pool.acquire(timeout=self.settings.connect_timeout_s) as conn:
            return await asyncio.wait_for(postgres_account(conn), self.settings.connect_timeout_s)

    async def role_findings(self, role: str) -> list[str]:
        if self._pool is None:
            raise shutting_down()
        async with self._pool.acquire(timeout=self.settings.connect_timeout_s) as conn:
            return await asyncio.wait_for(postgres_role_findings(conn, role), self.settings.connect_timeout_s)

    @asynccontextmanager
    async def query(self, sql: str, timeout_s: float, caller: Caller | None = None) -> AsyncIterator[Cursor]:
        if self._pool is None:
            raise shutting_down()
        try:
            conn = await self._pool.acquire(timeout=min(timeout_s, self.settings.connect_timeout_s))
        except TimeoutError:
            raise self.no_free_connection() from None
        except (asyncpg.PostgresError, *_CONNECTION_ERRORS) as exc:
            raise self.cannot_connect(_text(exc)) from None
        guard = install(conn._transport, self.settings.limits, mysql=False)
        try:
            try:
                await conn.execute(f"BEGIN READ ONLY; {self.statement_settings(timeout_s)}")
                await act_as(conn, caller)
                statement = await conn.prepare(sql)
                if not statement.get_attributes():
                    # COPY, SET, COMMIT, DO, CALL...: refused before they run, whatever the guard said.
                    raise ServiceError(QUERY_REFUSED, "only a query that returns rows can run; this statement returns none")
                cursor = await statement.cursor()
            except (asyncpg.PostgresError, *_CONNECTION_ERRORS) as exc:
                raise guard.refusal or self.error(exc, timeout_s) from None
            yield PostgresCursor(self, statement, cursor, timeout_s, guard)
        finally:
            await asyncio.shield(self._release(conn))

    def statement_settings(self, timeout_s: float) -> str:
        """The settings every statement runs under, SET LOCAL so that they end with its transaction: time, memory, temp files."""
        ms = max(1, int(timeout_s * 1000))
        settings = [
            f"SET LOCAL statement_timeout = {ms}",
            f"SET LOCAL idle_in_transaction_session_timeout = {ms + 5000}",
            f"SET LOCAL work_mem = '{self.settings.pg_work_mem}'",
        ]
        if self._temp_file_limit_settable and self.settings.pg_temp_file_limit != "-1":
            settings.append(f"SET LOCAL temp_file_limit = '{self.settings.pg_temp_file_limit}'")
        return "; ".join(settings)

    async def _release(self, conn: asyncpg.Connection) -> None:
        assert self._pool is not None
        try:
            closed = conn.is_closed()
        except asyncpg.InterfaceError:  # the pool took back the lost connection itself
            return
        try:
            if not closed and conn.is_in_transaction():
                await asyncio.wait_for(conn.execute("ROLLBACK"), self.settings.connect_timeout_s)
        except Exception as exc:  # a broken connection: drop it rather than reuse it
            log.warning("postgres_rollback_failed", source=self.name, error=_text(exc))
            conn.terminate()
        try:
            await self._pool.release(conn, timeout=self.settings.connect_timeout_s)
        except Exception as exc:
            log.warning("postgres_release_failed", source=self.name, error=_text(exc))

    def error(self, exc: BaseException, timeout_s: float) -> ServiceError:
        if isinstance(exc, asyncpg.ConnectionDoesNotExistError) and isinstance(exc.__cause__, asyncpg.PostgresError):
            exc = exc.__cause__  # the server said why it closed the connection (a FATAL error): that is the error
        if isinstance(exc, asyncpg.IdleInTransactionSessionTimeoutError) or (isinstance(exc, asyncpg.QueryCanceledError) and _STATEMENT_TIMEOUT in _text(exc)):
            return ServiceError(QUERY_TIMEOUT, timeout_message(timeout_s))
        if isinstance(exc, asyncpg.QueryCanceledError):
            # pg_cancel_backend from another session, a recovery conflict...
            return ServiceError(QUERY_FAILED, f"cancelled by the database: {_text(exc)}")
        if isinstance(exc, asyncpg.AdminShutdownError):
            # pg_terminate_backend from another session, or the server shutting down: try again later.
            return ServiceError(UNAVAILABLE, f"cancelled by the database: {_text(exc)}")
        if isinstance(exc, asyncpg.ReadOnlySQLTransactionError):
            return ServiceError(QUERY_REFUSED, f"PostgreSQL refused the statement (read-only transaction): {_text(exc)}")
        if isinstance(exc, asyncpg.InsufficientPrivilegeError):
            return ServiceError(QUERY_REFUSED, f"PostgreSQL refused the statement (the source's account may not do this): {_text(exc)}")
        if isinstance(exc, asyncpg.PostgresError) and not isinstance(exc, asyncpg.PostgresConnectionError):
            return ServiceError(QUERY_FAILED, _text(exc))
        return self.lost_connection(_text(exc))

    async def describe(self, wanted: Sequence[str] | None, max_tables: int, timeout_s: float, caller: Caller | None = None) -> catalog.Catalog:
        """Tables (all, up to `max_tables`, or those `wanted`) from pg_catalog, as this role may read them."""
        rows = self.iterate(_PG_TABLES, timeout_s, caller=caller)
        listed = [catalog.CatalogTable(oid, catalog.qualified(schema, name, home), estimate, view, comment) async for oid, schema, name, home, estimate, view, comment in rows]
        picked, unknown = catalog.pick(listed, wanted, max_tables)
        if not picked:
            return catalog.Catalog([], len(listed), unknown)
        oids = catalog.id_list([t.key for t in picked])
        columns = [row async for row in self.iterate(_PG_COLUMNS.format(oids=oids), timeout_s, caller=caller)]
        foreign_keys = []
        if wanted is not None:
            async for oid, from_columns, schema, name, home, to_columns in self.iterate(_PG_FOREIGN_KEYS.format(oids=oids), timeout_s, caller=caller):
                foreign_keys.append((oid, from_columns, catalog.qualified(schema, name, home), to_columns))
        return catalog.Catalog(catalog.assemble(picked, columns, foreign_keys), len(listed), unknown)


async def _may_set_temp_file_limit(conn: asyncpg.Connection) -> bool:
    """Whether this role may SET temp_file_limit: a superuser, or (PostgreSQL 15+) one granted SET on it."""
    try:
        return bool(await conn.fetchval("SELECT current_setting('is_superuser') = 'on' OR has_parameter_privilege('temp_file_limit', 'SET')"))
    except asyncpg.UndefinedFunctionError:  # before PostgreSQL 15 only a superuser may
        return bool(await conn.fetchval("SELECT current_setting('is_superuser') = 'on'"))


# Catalog queries of `describe`. Only what the role can SELECT (the table, or some of its
# columns, in a schema it may use); partitions are left to their parent table.
_PG_TABLES = """
SELECT c.oid::int8, n.nspname::text, c.relname::text, n.nspname = current_schema() AS home,
       CASE WHEN c.relkind IN ('r', 'm', 'f') AND c.reltuples >= 0 THEN c.reltuples::int8 END,
       c.relkind IN ('v', 'm'), pg_catalog.obj_description(c.oid, 'pg_class')
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND NOT c.relispartition
  AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
  AND has_schema_privilege(n.oid, 'USAGE')
  AND (has_table_privilege(c.oid, 'SELECT') OR has_any_column_privilege(c.oid, 'SELECT'))
ORDER BY home DESC, n.nspname, c.relname
"""
_PG_COLUMNS = """
SELECT a.attrelid::int8, a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod), NOT a.attnotnull,
       COALESCE(a.attnum = ANY (i.indkey), false), pg_catalog.col_description(a.attrelid, a.attnum)
FROM pg_catalog.pg_attribute a
LEFT JOIN pg_catalog.pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
WHERE a.attrelid IN {oids} AND a.attnum > 0 AND NOT a.attisdropped
  AND has_column_privilege(a.attrelid, a.attnum, 'SELECT')
ORDER BY a.attrelid, a.attnum
"""
_PG_FOREIGN_KEYS = """
SELECT con.conrelid::int8,
       ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY AS k(num, ord)
             JOIN pg_catalog.pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.num ORDER BY k.ord),
       rn.nspname::text, rc.relname::text, rn.nspname = current_schema(),
       ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY AS k(num, ord)
             JOIN pg_catalog.pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.num ORDER BY k.ord)
FROM pg_catalog.pg_constraint con
JOIN pg_catalog.pg_class rc ON rc.oid = con.confrelid
JOIN pg_catalog.pg_namespace rn ON rn.oid = rc.relnamespace
WHERE con.contype = 'f' AND con.conrelid IN {oids}
ORDER BY con.conrelid, con.conname
"""


def _text(exc: BaseException) -> str:
    """The server's message with its detail, hint and position, never a traceback."""
    if isinstance(exc, asyncpg.PostgresError):
        parts = [str(getattr(exc, "message", None) or exc)]
        position = getattr(exc, "position", None)
        if position:
            parts.append(f"(at character {position})")
        detail = getattr(exc, "detail", None)
        if detail:
            parts.append(f"DETAIL: {detail}")
        hint = getattr(exc, "hint", None)
        if hint:
            parts.append(f"HINT: {hint}")
        return " ".join(parts)
    return str(exc) or type(exc).__name__
