"""MySQL and MariaDB through an asyncmy pool, read with an unbuffered (streaming) cursor.

Per query: multi-statements are switched off on the server (COM_SET_OPTION; the drivers
always ask for them at connect), the session is made READ ONLY (which, unlike a read-only
transaction alone, also stops DDL and its implicit commit), the server's statement time
limit is set, and a READ ONLY transaction is started. A query read to the end leaves its
connection reset (locks released, session state cleared) before it is reused; a query left
early is stopped with KILL QUERY from a second connection and its connection is discarded.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import asyncmy
import asyncmy.errors
import structlog
from asyncmy.cursors import SSCursor

from services.query.engines import catalog
from services.query.engines.base import Cursor, Engine, EngineSettings, shutting_down, timeout_message
from services.query.privileges import Account, mysql_account, mysql_role_findings, quote_role
from services.query.values import Column
from services.query.wire import WireGuard, install
from shared.contracts import Caller
from shared.errors import QUERY_FAILED, QUERY_REFUSED, QUERY_TIMEOUT, ServiceError

log = structlog.get_logger(__name__)

_COM_SET_OPTION = 0x1B
_COM_RESET_CONNECTION = 0x1F
_MULTI_STATEMENTS_OFF = b"\x01\x00"

# Server error codes.
_READ_ONLY_TRANSACTION = 1792  # ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION
_STATEMENT_TIMEOUT = {1969, 3024}  # MariaDB max_statement_time, MySQL max_execution_time
_QUERY_INTERRUPTED = 1317  # KILL QUERY (ours when a query is left early; anyone's otherwise)
# ER_DBACCESS_DENIED, ER_TABLEACCESS_DENIED, ER_COLUMNACCESS_DENIED, ER_SPECIFIC_ACCESS_DENIED, ER_PROCACCESS_DENIED
_ACCESS_DENIED = {1044, 1142, 1143, 1227, 1370}

# Column type codes (the protocol's MYSQL_TYPE_*) -> SQL type names.
_TYPE_NAMES = {
    0: "DECIMAL", 1: "TINYINT", 2: "SMALLINT", 3: "INT", 4: "FLOAT", 5: "DOUBLE", 6: "NULL",
    7: "TIMESTAMP", 8: "BIGINT", 9: "MEDIUMINT", 10: "DATE", 11: "TIME", 12: "DATETIME", 13: "YEAR",
    14: "DATE", 15: "VARCHAR", 16: "BIT", 245: "JSON", 246: "DECIMAL", 247: "ENUM", 248: "SET",
    249: "TINYBLOB", 250: "MEDIUMBLOB", 251: "LONGBLOB", 252: "BLOB", 253: "VARCHAR", 254: "CHAR", 255: "GEOMETRY",
}  # fmt: skip
_TEXT_NAMES = {"TINYBLOB": "TINYTEXT", "MEDIUMBLOB": "MEDIUMTEXT", "LONGBLOB": "LONGTEXT", "BLOB": "TEXT"}
_BINARY_NAMES = {"VARCHAR": "VARBINARY", "CHAR": "BINARY"}
_BINARY_CHARSET = 63
_ENUM_FLAG = 256
_SET_FLAG = 2048


def mysql_time(value: Any) -> Any:
    """A TIME value (a timedelta from the driver) as MySQL writes it: [-]HH:MM:SS[.ffffff]."""
    if not isinstance(value, dt.timedelta):
        return value
    micros = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
    sign = "-" if micros < 0 else ""
    seconds, micros = divmod(abs(micros), 1_000_000)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    text = f"{sign}{hours:02d}:{minutes:02d}:{seconds:02d}"
    return f"{text}.{micros:06d}" if micros else text


def bit_value(value: Any) -> Any:
    """A BIT(n) value (big-endian bytes from the driver) as an integer."""
    return int.from_bytes(value, "big") if isinstance(value, (bytes, bytearray)) else value


def _column(field: Any, description: Sequence[Any]) -> Column:
    name, type_code = description[0], description[1]
    type_name = _TYPE_NAMES.get(type_code, f"TYPE{type_code}")
    charset = getattr(field, "charsetnr", None)
    flags = getattr(field, "flags", 0) or 0
    if flags & _ENUM_FLAG:
        type_name = "ENUM"
    elif flags & _SET_FLAG:
        type_name = "SET"
    elif charset is not None:
        if charset != _BINARY_CHARSET:
            type_name = _TEXT_NAMES.get(type_name, type_name)
        elif type_name in _BINARY_NAMES:
            type_name = _BINARY_NAMES[type_name]
    if type_name == "TIME":
        return Column(name, type_name, convert=mysql_time, floats=False)
    if type_name == "BIT":
        return Column(name, type_name, convert=bit_value, floats=False)
    return Column(name, type_name, json=type_name == "JSON", floats=type_name in ("FLOAT", "DOUBLE", "NULL"))


class MysqlCursor(Cursor):
    def __init__(self, engine: MysqlEngine, cursor: SSCursor, timeout_s: float, guard: WireGuard) -> None:
        self._engine = engine
        self._cursor = cursor
        self._timeout_s = timeout_s
        self._guard = guard
        self.exhausted = False
        fields = getattr(getattr(cursor, "_result", None), "fields", None) or [None] * len(cursor.description or ())
        self.columns = [_column(f, d) for f, d in zip(fields, cursor.description or (), strict=True)]

    async def fetch(self, n: int) -> Sequence[Sequence[Any]]:
        if self.exhausted:
            return []
        self._guard.new_fetch()
        try:
            rows = await self._cursor.fetchmany(n)
        except (asyncmy.errors.MySQLError, OSError) as exc:
            raise self._guard.refusal or self._engine.error(exc, self._timeout_s) from None
        except UnicodeDecodeError as exc:
            raise undecodable_text(exc) from None
        if len(rows) < n:
            self.exhausted = True
        return rows


async def act_as(conn: Any, caller: Caller | None) -> None:
    """Inside the read-only transaction: SET ROLE to the caller's role, whose grants then apply beside the
    account's own (give the account none of its own on the data; docs/access.md). COM_RESET_CONNECTION
    keeps the current role, so `_reset` sets it to NONE before the connection is reused."""
    if caller is not None and caller.role is not None:
        async with conn.cursor() as cur:
            await cur.execute(f"SET ROLE {quote_role(caller.role)}")


class MysqlEngine(Engine):
    """A MySQL or MariaDB source (mysql:// or mariadb:// URL)."""

    dialect = "mysql"

    def __init__(self, name: str, url: str, settings: EngineSettings) -> None:
        super().__init__(name, url, settings)
        self._params = _connect_params(url)
        self._pool: Any = None
        self._mariadb: bool | None = None
        self._sql_mode: str | None = None

    async def open(self) -> None:
        self._pool = await asyncmy.create_pool(
            minsize=0,
            maxsize=self.settings.pool_size,
            pool_recycle=300,
            autocommit=True,
            connect_timeout=self.settings.connect_timeout_s,
            **self._params,
        )

    def connect_with(self, *, host: str, port: int, user: str, password: str, database: str, ssl: Any) -> None:
        """Connect with these arguments instead of the URL (a user's connection: `host` is the checked address)."""
        self._params = {**self._params, "host": host, "port": port, "user": user, "password": password, "db": database}
        self._params.pop("ssl", None)
        if ssl is not None:
            self._params["ssl"] = ssl

    async def server_version(self) -> str:
        if self._pool is None:
            raise shutting_down()
        conn = await asyncio.wait_for(self._pool.acquire(), self.settings.connect_timeout_s)
        try:
            return str(conn.get_server_info())
        finally:
            self._pool.release(conn)

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            try:
                await asyncio.wait_for(self._pool.wait_closed(), self.settings.connect_timeout_s)
            except TimeoutError:
                self._pool.terminate()
            self._pool = None

    async def account(self) -> Account:
        # On a connection of its own: SET ROLE, used to read the roles' grants, stays off the pool.
        conn = await asyncio.wait_for(asyncmy.connect(connect_timeout=self.settings.connect_timeout_s, **self._params), self.settings.connect_timeout_s)
        try:
            return await asyncio.wait_for(mysql_account(conn), self.settings.connect_timeout_s)
        finally:
            conn.close()

    async def role_findings(self, role: str) -> list[str]:
        conn = await asyncio.wait_for(asyncmy.connect(connect_timeout=self.settings.connect_timeout_s, **self._params), self.settings.connect_timeout_s)
        try:
            return await asyncio.wait_for(mysql_role_findings(conn, role), self.settings.connect_timeout_s)
        finally:
            conn.close()

    @asynccontextmanager
    async def query(self, sql: str, timeout_s: float, caller: Caller | None = None) -> AsyncIterator[Cursor]:
        if self._pool is None:
            raise shutting_down()
        try:
            conn = await asyncio.wait_for(self._pool.acquire(), min(timeout_s, self.settings.connect_timeout_s))
        except TimeoutError:
            raise self.no_free_connection() from None
        except (asyncmy.errors.MySQLError, OSError) as exc:
            raise self.cannot_connect(_text(exc)) from None
        finished = False
        cursor: MysqlCursor | None = None
        try:
            guard = install(conn._transport, self.settings.limits, mysql=True)
            try:
                await self._prepare_session(conn, timeout_s)
                await act_as(conn, caller)
                raw = conn.cursor(SSCursor)
                await raw.execute(sql)
            except (asyncmy.errors.MySQLError, OSError) as exc:
                finished = guard.refusal is None  # the server answered (an error): nothing is left running
                raise guard.refusal or self.error(exc, timeout_s) from None
            except UnicodeDecodeError as exc:  # the first rows are read with the result's metadata
                raise undecodable_text(exc) from None
            cursor = MysqlCursor(self, raw, timeout_s, guard)
            yield cursor
            finished = cursor.exhausted
        finally:
            if cursor is not None and cursor.exhausted:
                finished = True
            await asyncio.shield(self._release(conn, finished, had_role=caller is not None and caller.role is not None))

    async def _prepare_session(self, conn: Any, timeout_s: float) -> None:
        await conn._execute_command(_COM_SET_OPTION, _MULTI_STATEMENTS_OFF)
        await conn.read_packet()
        async with conn.cursor() as cur:
            if self._mariadb is None or self._sql_mode is None:
                self._mariadb = "mariadb" in conn.get_server_info().lower()
                await cur.execute("SELECT @@GLOBAL.sql_mode")
                self._sql_mode = lexing_sql_mode(str((await cur.fetchone())[0]))
            await cur.execute("SET SESSION TRANSACTION READ ONLY")
            for setting in self.statement_settings(timeout_s):
                await cur.execute(setting)
            await cur.execute("START TRANSACTION READ ONLY")

    def statement_settings(self, timeout_s: float) -> list[str]:
        """The session settings every statement runs under: how its text is read, its time and memory."""
        settings = [f"SET SESSION sql_mode = {_literal(self._sql_mode or '')}"]
        if self._mariadb:
            settings.append(f"SET SESSION max_statement_time = {timeout_s:.3f}")
            settings.append(f"SET SESSION max_session_mem_used = {self.settings.mysql_max_mem_bytes}")
        else:
            settings.append(f"SET SESSION max_execution_time = {max(1, int(timeout_s * 1000))}")
        return settings

    async def _release(self, conn: Any, finished: bool, *, had_role: bool = False) -> None:
        """Back to the pool, reset, when the result was read to the end; else KILL QUERY and drop it."""
        if finished and conn.connected:
            try:
                await asyncio.wait_for(self._reset(conn, had_role), self.settings.connect_timeout_s)
            except Exception as exc:
                log.warning("mysql_reset_failed", source=self.name, error=_text(exc))
                conn.close()
        else:
            transport = conn._transport
            if transport is not None and not transport.is_closing():  # else already cut off (a WireGuard refusal)
                await self._kill_query(conn)
            conn.close()
        self._pool.release(conn)

    async def _reset(self, conn: Any, had_role: bool = False) -> None:
        """Nothing the query did outlives it: roll back, free named locks, reset the session.

        COM_RESET_CONNECTION (asyncmy has no call for it; MySQL 5.7+, MariaDB 10.2+) clears
        user variables, session variables, temporary tables and prepared statements, and
        keeps the connection's character set. RELEASE_ALL_LOCKS() comes first because not
        every server version frees GET_LOCK() locks on a reset. It keeps the current role
        (MariaDB 10.11), so a query run as an ACCESS_POLICY role (`had_role`) ends with SET ROLE NONE.
        """
        await conn.rollback()
        async with conn.cursor() as cur:
            await cur.execute("SELECT RELEASE_ALL_LOCKS()")
            if had_role:
                await cur.execute("SET ROLE NONE")
        await conn._execute_command(_COM_RESET_CONNECTION, b"")
        await conn._read_ok_packet()
        if not conn.get_autocommit():  # the reset takes the server's default
            await conn.autocommit(True)

    async def _kill_query(self, conn: Any) -> None:
        try:
            thread_id = conn.thread_id()
            killer = await asyncio.wait_for(asyncmy.connect(connect_timeout=self.settings.connect_timeout_s, **self._params), self.settings.connect_timeout_s)
            try:
                async with killer.cursor() as cur:
                    await asyncio.wait_for(cur.execute(f"KILL QUERY {int(thread_id)}"), self.settings.connect_timeout_s)
            finally:
                killer.close()
        except Exception as exc:  # closing the connection below still ends the query once the server writes to it
            log.warning("mysql_kill_query_failed", source=self.name, error=_text(exc))

    def error(self, exc: BaseException, timeout_s: float) -> ServiceError:
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
        if code in _STATEMENT_TIMEOUT:
            return ServiceError(QUERY_TIMEOUT, timeout_message(timeout_s))
        if code == _READ_ONLY_TRANSACTION:
            return ServiceError(QUERY_REFUSED, f"the database refused the statement (read-only session): {_text(exc)}")
        if code in _ACCESS_DENIED:
            return ServiceError(QUERY_REFUSED, f"the database refused the statement (the source's account may not do this): {_text(exc)}")
        if code == _QUERY_INTERRUPTED:
            # KILL QUERY from another session: ours only ever hits a query already left.
            return ServiceError(QUERY_FAILED, f"cancelled by the database: {_text(exc)}")
        if isinstance(exc, asyncmy.errors.OperationalError) and code is not None and code >= 2000:
            return self.lost_connection(_text(exc))
        if isinstance(exc, OSError):
            return self.lost_connection(_text(exc))
        return ServiceError(QUERY_FAILED, _text(exc))

    async def describe(self, wanted: Sequence[str] | None, max_tables: int, timeout_s: float, caller: Caller | None = None) -> catalog.Catalog:
        """Tables (all, up to `max_tables`, or those `wanted`) from information_schema, as this account sees them."""
        listed = [
            catalog.CatalogTable((schema, name), catalog.qualified(schema, name, bool(home)), None if estimate is None else int(estimate), bool(view), None if view else comment or None)
            async for schema, name, home, estimate, view, comment in self.iterate(_MY_TABLES, timeout_s, caller=caller)
        ]
        picked, unknown = catalog.pick(listed, wanted, max_tables)
        if not picked:
            return catalog.Catalog([], len(listed), unknown)
        pairs = "(" + ", ".join(f"({_literal(t.key[0])}, {_literal(t.key[1])})" for t in picked) + ")"
        columns = [
            ((schema, table), name, type_, bool(nullable), bool(primary_key), comment or None)
            async for schema, table, name, type_, nullable, primary_key, comment in self.iterate(_MY_COLUMNS.format(pairs=pairs), timeout_s, caller=caller)
        ]
        foreign_keys: dict[tuple[str, str, str], tuple[list[str], str, list[str]]] = {}
        if wanted is not None:
            async for schema, table, constraint, column, ref_schema, ref_table, ref_column, home in self.iterate(_MY_FOREIGN_KEYS.format(pairs=pairs), timeout_s, caller=caller):
                entry = foreign_keys.setdefault((schema, table, constraint), ([], catalog.qualified(ref_schema, ref_table, bool(home)), []))
                entry[0].append(column)
                entry[2].append(ref_column)
        fks = [((schema, table), cols, ref, ref_cols) for (schema, table, _), (cols, ref, ref_cols) in foreign_keys.items()]
        return catalog.Catalog(catalog.assemble(picked, columns, fks), len(listed), unknown)


# Catalog queries of `describe`. information_schema lists only what the account holds a
# privilege on; TABLE_ROWS is InnoDB's estimate (NULL for views).
_MY_TABLES = """
SELECT TABLE_SCHEMA, TABLE_NAME, TABLE_SCHEMA = DATABASE(), TABLE_ROWS, TABLE_TYPE = 'VIEW', TABLE_COMMENT
FROM information_schema.TABLES
WHERE TABLE_SCHEMA NOT IN ('information_schema', 'mysql', 'performance_schema', 'sys') AND TABLE_TYPE <> 'SEQUENCE'
ORDER BY TABLE_SCHEMA = DATABASE() DESC, TABLE_SCHEMA, TABLE_NAME
"""
_MY_COLUMNS = """
SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE = 'YES', COLUMN_KEY = 'PRI', COLUMN_COMMENT
FROM information_schema.COLUMNS
WHERE (TABLE_SCHEMA, TABLE_NAME) IN {pairs}
ORDER BY TABLE_SCHEMA, TABLE_NAME, ORDINAL_POSITION
"""
_MY_FOREIGN_KEYS = """
SELECT TABLE_SCHEMA, TABLE_NAME, CONSTRAINT_NAME, COLUMN_NAME,
       REFERENCED_TABLE_SCHEMA, REFERENCED_TABLE_NAME, REFERENCED_COLUMN_NAME, REFERENCED_TABLE_SCHEMA = DATABASE()
FROM information_schema.KEY_COLUMN_USAGE
WHERE REFERENCED_TABLE_NAME IS NOT NULL AND (TABLE_SCHEMA, TABLE_NAME) IN {pairs}
ORDER BY TABLE_SCHEMA, TABLE_NAME, CONSTRAINT_NAME, ORDINAL_POSITION
"""


# sql_mode flags that change how the server reads the text of a query (quotes, escapes, `||`,
# a space before `(`, operator precedence, whole other grammars); the guard reads it without them.
_LEXING_MODES = frozenset(
    {"ANSI_QUOTES", "NO_BACKSLASH_ESCAPES", "PIPES_AS_CONCAT", "IGNORE_SPACE", "HIGH_NOT_PRECEDENCE", "ANSI", "ORACLE", "MSSQL", "DB2", "POSTGRESQL", "MAXDB", "MYSQL323", "MYSQL40"}
)


def lexing_sql_mode(global_mode: str) -> str:
    """The server's sql_mode without the flags that would make it read SQL other than as the guard does."""
    return ",".join(flag for flag in global_mode.split(",") if flag and flag.upper() not in _LEXING_MODES)


def _literal(value: str) -> str:
    """A catalog name as a MySQL string literal (names come from the catalog, never from a caller).

    Backslashes are doubled too: under NO_BACKSLASH_ESCAPES such a name would then not match,
    which is safe, where an undoubled one could end the literal early in the default mode.
    """
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def undecodable_text(exc: UnicodeDecodeError) -> ServiceError:
    """A text column whose bytes are not valid UTF-8 (`CAST(X'EDA080' AS CHAR)`): a clear error, as SQLite gives."""
    return ServiceError(
        QUERY_FAILED,
        f"a text value of the result is not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); select it as bytes instead (CAST(… AS BINARY) comes back as base64)",
    )


def _text(exc: BaseException) -> str:
    if len(exc.args) >= 2 and isinstance(exc.args[1], str):
        return exc.args[1]
    return str(exc) or type(exc).__name__


def _connect_params(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    params: dict[str, Any] = {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 3306,
        "user": unquote(parts.username) if parts.username else "root",
        "password": unquote(parts.password) if parts.password else "",
        "db": unquote(parts.path.lstrip("/")) or None,
        "charset": query.get("charset", "utf8mb4"),
    }
    if query.get("ssl", "").lower() in ("1", "true", "yes", "required"):
        params["ssl"] = ssl.create_default_context()
    return params
