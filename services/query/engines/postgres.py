"""PostgreSQL through an asyncpg pool: each query in a READ ONLY transaction, read with a server-side cursor.

asyncpg prepares the SQL with the extended protocol, which never runs more than one
statement, so nothing can follow the query to end the read-only transaction. The
server's statement_timeout stops a runaway step; a cancelled task makes asyncpg send a
cancel request, and the transaction is rolled back, which closes the portal.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import structlog

from services.query.engines.base import Cursor, Engine, EngineSettings, timeout_message
from services.query.engines.pg_codecs import decode_char, install_codecs
from services.query.values import Column
from services.query.wire import WireGuard, install
from shared.bus import redact_url
from shared.errors import (
    QUERY_FAILED,
    QUERY_REFUSED,
    QUERY_TIMEOUT,
    UNAVAILABLE,
    ServiceError,
)

log = structlog.get_logger(__name__)

APPLICATION_NAME = "dbgenie-query"
# Types whose values are never floats (so never NaN or infinity): the encoder skips that check.
_NO_FLOAT_TYPES = frozenset(
    {
        "int2", "int4", "int8", "oid", "numeric", "money", "bool", "text", "varchar", "bpchar", "char", "name",
        "date", "time", "timetz", "timestamp", "timestamptz", "interval", "uuid", "json", "jsonb", "bytea",
        "inet", "cidr", "macaddr", "xml", "bit", "varbit", "tsvector",
    }
)
# Types whose values (as this engine decodes them) orjson writes itself, exactly.
_NATIVE_TYPES = frozenset(
    {
        "int2", "int4", "int8", "oid", "float4", "float8", "bool", "text", "varchar", "bpchar", "name",
        "date", "timestamp", "timestamptz", "time", "timetz", "interval", "money", "xml", "bit", "varbit",
    }
)
_CONNECTION_ERRORS = (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError)


async def _init_connection(conn: asyncpg.Connection) -> None:
    await install_codecs(conn)


class PostgresCursor(Cursor):
    def __init__(
        self, engine: PostgresEngine, statement: asyncpg.prepared_stmt.PreparedStatement, cursor: Any, timeout_s: float, guard: WireGuard
    ) -> None:
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
        self._dsn = url
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        self._pool = asyncpg.create_pool(
            self._dsn,
            min_size=0,
            max_size=self.settings.pool_size,
            statement_cache_size=0,  # every query is new SQL; do not keep them prepared
            max_inactive_connection_lifetime=300,
            timeout=self.settings.connect_timeout_s,
            init=_init_connection,
            server_settings={"application_name": APPLICATION_NAME, "IntervalStyle": "iso_8601"},
        )
        await self._pool

    async def close(self) -> None:
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), self.settings.connect_timeout_s)
            except TimeoutError:
                self._pool.terminate()
            self._pool = None

    @asynccontextmanager
    async def query(self, sql: str, timeout_s: float) -> AsyncIterator[Cursor]:
        if self._pool is None:
            raise ServiceError(UNAVAILABLE, "the query service is shutting down")
        try:
            conn = await self._pool.acquire(timeout=min(timeout_s, self.settings.connect_timeout_s))
        except TimeoutError:
            raise ServiceError(UNAVAILABLE, f"no connection to source {self.name!r} came free in time") from None
        except (asyncpg.PostgresError, *_CONNECTION_ERRORS) as exc:
            raise ServiceError(UNAVAILABLE, f"cannot connect to source {self.name!r} ({redact_url(self.url)}): {_text(exc)}") from None
        ms = max(1, int(timeout_s * 1000))
        guard = install(conn._transport, self.settings.limits, mysql=False)
        try:
            try:
                await conn.execute(
                    "BEGIN READ ONLY;"
                    f" SET LOCAL statement_timeout = {ms};"
                    f" SET LOCAL idle_in_transaction_session_timeout = {ms + 5000}"
                )
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

    async def _release(self, conn: asyncpg.Connection) -> None:
        assert self._pool is not None
        if getattr(conn, "_con", conn) is None:
            return  # the connection was lost (e.g. aborted by its WireGuard) and the pool has taken it back
        try:
            if not conn.is_closed() and conn.is_in_transaction():
                await asyncio.wait_for(conn.execute("ROLLBACK"), self.settings.connect_timeout_s)
        except Exception as exc:  # a broken connection: drop it rather than reuse it
            log.warning("postgres_rollback_failed", source=self.name, error=_text(exc))
            conn.terminate()
        try:
            await self._pool.release(conn, timeout=self.settings.connect_timeout_s)
        except Exception as exc:
            log.warning("postgres_release_failed", source=self.name, error=_text(exc))

    def error(self, exc: BaseException, timeout_s: float) -> ServiceError:
        if isinstance(exc, (asyncpg.QueryCanceledError, asyncpg.IdleInTransactionSessionTimeoutError)):
            return ServiceError(QUERY_TIMEOUT, timeout_message(timeout_s))
        if isinstance(exc, asyncpg.ReadOnlySQLTransactionError):
            return ServiceError(QUERY_REFUSED, f"PostgreSQL refused the statement (read-only transaction): {_text(exc)}")
        if isinstance(exc, asyncpg.PostgresError) and not isinstance(exc, asyncpg.PostgresConnectionError):
            return ServiceError(QUERY_FAILED, _text(exc))
        return ServiceError(UNAVAILABLE, f"lost the connection to source {self.name!r}: {_text(exc)}")


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
