"""What every database engine offers the query runner: a read-only cursor over one query."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar

from services.query.guard import FunctionName, FunctionPolicy, default_policy
from services.query.privileges import Account
from services.query.values import Column, RowEncoder
from services.query.wire import ByteLimits
from shared.bus import redact_url
from shared.contracts import Caller
from shared.errors import UNAVAILABLE, ServiceError


@dataclass(frozen=True)
class EngineSettings:
    """The parts of QueryConfig an engine needs."""

    pool_size: int = 5
    # Upper bound on waiting for a connection, connecting, and on clean-up steps.
    connect_timeout_s: float = 10.0
    # QUERY_MAX_CELL_BYTES / QUERY_MAX_ROW_BYTES, checked as the rows arrive (services/query/wire.py).
    limits: ByteLimits = field(default_factory=ByteLimits)
    # Server-side bounds per statement (QUERY_PG_WORK_MEM, QUERY_PG_TEMP_FILE_LIMIT, QUERY_MYSQL_MAX_MEM_BYTES).
    pg_work_mem: str = "4MB"
    pg_temp_file_limit: str = "1GB"
    mysql_max_mem_bytes: int = 256 * 1024 * 1024


SHUTTING_DOWN = "the query service is shutting down"


def shutting_down() -> ServiceError:
    """What a source answers once `close()` has begun."""
    return ServiceError(UNAVAILABLE, SHUTTING_DOWN)


def timeout_message(timeout_s: float) -> str:
    return f"the query ran longer than the {timeout_s:g}s time limit (QUERY_TIMEOUT_S) and was stopped"


class Cursor(ABC):
    """The rows of one running query, read in batches; `columns` is known after the first fetch."""

    columns: list[Column]

    @abstractmethod
    async def fetch(self, n: int) -> Sequence[Sequence[Any]]:
        """Up to `n` more rows; fewer than `n` means the result is exhausted."""

    async def fetch_chunks(self, n: int, encoder: RowEncoder, limit: int, offset: int) -> tuple[int, list[tuple[int, bytes]], bool]:
        """Up to `n` more rows, already encoded as JSON chunks of at most `limit` bytes: (rows, chunks, finished).

        `finished` says the result is exhausted. An engine that measures rows as it reads them
        may stop before `n` rows, at its fetch budget, and say it is not finished; one that
        reads in a worker thread overrides this to encode there too.
        """
        rows = await self.fetch(n)
        return len(rows), encoder.chunks(rows, limit, offset), len(rows) < n


class Engine(ABC):
    """One configured source. Connections are opened lazily and closed by `close()`.

    `query(sql, timeout_s)` runs `sql` in the database's read-only mode with a server-side
    time limit of `timeout_s`, and yields a Cursor. Leaving the block early (an exception,
    a cancelled task, enough rows read) stops the query on the server and frees the cursor.
    Failures are raised as ServiceError with a clear message.
    """

    dialect: ClassVar[str]  # the sqlglot dialect the guard parses with
    # Set for a user's own connection (services/query/connections): whose it is, and its record id.
    owner: str | None = None
    connection_id: str | None = None

    def __init__(self, name: str, url: str, settings: EngineSettings) -> None:
        self.name = name
        self.url = url
        self.settings = settings

    def no_free_connection(self) -> ServiceError:
        """A query waited for a pooled connection longer than it may."""
        return ServiceError(UNAVAILABLE, f"no connection to source {self.name!r} came free in time")

    def cannot_connect(self, reason: str) -> ServiceError:
        """Opening a connection for a query failed; the URL is shown without its password."""
        return ServiceError(UNAVAILABLE, f"cannot connect to source {self.name!r} ({redact_url(self.url)}): {reason}")

    def lost_connection(self, reason: str) -> ServiceError:
        """A query's connection broke under it (the server went away, the network failed)."""
        return ServiceError(UNAVAILABLE, f"lost the connection to source {self.name!r}: {reason}")

    @abstractmethod
    async def open(self) -> None:
        """Prepare to serve queries (create the pool); cheap to call once."""

    @abstractmethod
    async def close(self) -> None:
        """Close every connection; queries still running are cut off."""

    async def account(self) -> Account | None:
        """The database account this source connects as and what it may do beyond reading (after `open`).

        None where there is no account to ask: SQLite has none, and its handle is opened
        read-only by this service whatever the file's permissions (see docs/query-account.md).
        """
        return None

    async def server_version(self) -> str:
        """The database server's version (after `open`)."""
        return ""

    async def role_findings(self, role: str) -> list[str]:
        """Why the account may not run statements as the ACCESS_POLICY role `role` (not granted, or it can
        do more than read), one phrase each; empty when it may (docs/access.md)."""
        return [f"role {role!r}: a {self.dialect} source has no database roles"]

    def function_policy(self, allowed: Iterable[FunctionName] = ()) -> FunctionPolicy:
        """Which functions the guard lets a query on this source call; `allowed` is the operator's additions."""
        return default_policy(self.dialect, allowed)

    @abstractmethod
    def query(self, sql: str, timeout_s: float, caller: Caller | None = None) -> AbstractAsyncContextManager[Cursor]:
        """Run `sql` read-only, as `caller`'s role where it has one, and yield its cursor (see the class docstring)."""

    async def iterate(self, sql: str, timeout_s: float, batch: int = 10_000, caller: Caller | None = None) -> AsyncIterator[Sequence[Any]]:
        """Every row of `sql`, for tests and tools."""
        async with self.query(sql, timeout_s, caller) as cursor:
            while rows := await cursor.fetch(batch):
                for row in rows:
                    yield row
