"""Users' connection pools in one query replica: opened on first use, at most QUERY_MAX_POOLS, idle ones closed.

Each user also has a cap on queries running at once (QUERY_MAX_CONCURRENT_PER_USER), so one
person's slow database cannot take every slot of a replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from services.query import metrics
from services.query.engines.base import Engine
from shared.contracts import ConnectionRef
from shared.errors import BUSY, NOT_FOUND, ServiceError

log = structlog.get_logger(__name__)

Loader = Callable[[ConnectionRef], Awaitable[Engine]]
"""Opens the engine of a connection (record read, password opened, address checked, account checked)."""


@dataclass
class _Pool:
    engine: Engine
    owner: str
    in_use: int = 0
    last_used: float = field(default_factory=time.monotonic)


class UserPools:
    """The open engines of users' connections, keyed by connection id, least recently used first."""

    def __init__(self, loader: Loader, *, max_pools: int, idle_s: float, max_per_user: int) -> None:
        self._loader = loader
        self._max_pools = max_pools
        self._idle_s = idle_s
        self._max_per_user = max_per_user
        self._pools: OrderedDict[str, _Pool] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}
        self._running: dict[str, int] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[str], None]] = []

    @property
    def open_count(self) -> int:
        return len(self._pools)

    def on_close(self, listener: Callable[[str], None]) -> None:
        """Call `listener(connection_id)` whenever a connection's pool closes here, or a changed or deleted connection's close is asked for."""
        self._listeners.append(listener)

    def _closed(self, connection_id: str) -> None:
        for listener in self._listeners:
            listener(connection_id)

    def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap(), name="user-pools-reaper")

    async def checkout(self, ref: ConnectionRef) -> Engine:
        """The connection's engine, opened if need be, counted as in use until `checkin`. Raises ServiceError."""
        running = self._running.get(ref.owner, 0)
        if running >= self._max_per_user:
            raise ServiceError(BUSY, f"you are running {running} queries at once, the limit (QUERY_MAX_CONCURRENT_PER_USER); wait for one to finish")
        self._running[ref.owner] = running + 1
        try:
            pool = await self._pool(ref)
        except BaseException:
            self._release_slot(ref.owner)
            raise
        pool.in_use += 1
        return pool.engine

    def checkin(self, engine: Engine) -> None:
        assert engine.owner is not None and engine.connection_id is not None
        self._release_slot(engine.owner)
        pool = self._pools.get(engine.connection_id)
        if pool is not None and pool.engine is engine:
            pool.in_use -= 1
            pool.last_used = time.monotonic()
        # Else it was closed while in use (deleted): nothing else holds it now.

    def _release_slot(self, owner: str) -> None:
        left = self._running.get(owner, 1) - 1
        if left <= 0:
            self._running.pop(owner, None)
        else:
            self._running[owner] = left

    async def _pool(self, ref: ConnectionRef) -> _Pool:
        pool = self._found(ref)
        if pool is not None:
            return pool
        lock = self._locks.setdefault(ref.id, asyncio.Lock())
        try:
            async with lock:
                pool = self._found(ref)
                if pool is not None:
                    return pool
                engine = await self._loader(ref)
                try:
                    await self._make_room()
                except BaseException:
                    await _close(engine)
                    raise
                pool = _Pool(engine, ref.owner)
                self._pools[ref.id] = pool
                metrics.USER_POOLS.set(len(self._pools))
                log.info("user_pool_opened", connection=ref.id, pools=len(self._pools))
                return pool
        finally:
            if not lock.locked() and not lock._waiters:  # type: ignore[attr-defined]
                self._locks.pop(ref.id, None)

    def _found(self, ref: ConnectionRef) -> _Pool | None:
        pool = self._pools.get(ref.id)
        if pool is None:
            return None
        if pool.owner != ref.owner:
            raise ServiceError(NOT_FOUND, "no such connection")
        self._pools.move_to_end(ref.id)
        pool.last_used = time.monotonic()
        return pool

    async def _make_room(self) -> None:
        while len(self._pools) >= self._max_pools:
            victim = next((key for key, pool in self._pools.items() if pool.in_use == 0), None)
            if victim is None:
                raise ServiceError(BUSY, f"this replica's {self._max_pools} connection pools (QUERY_MAX_POOLS) are all running queries; retry in a moment")
            pool = self._pools.pop(victim)
            log.info("user_pool_evicted", connection=victim, pools=len(self._pools))
            self._closed(victim)
            await _close(pool.engine, "evicted", len(self._pools))

    async def close_connection(self, connection_id: str) -> bool:
        """Close the pool of a deleted or changed connection (queries on it are cut off)."""
        self._closed(connection_id)  # also when no pool is open here: what was read through an earlier one is stale too
        pool = self._pools.pop(connection_id, None)
        if pool is None:
            return False
        log.info("user_pool_closed", connection=connection_id, pools=len(self._pools), in_use=pool.in_use)
        await _close(pool.engine, "changed", len(self._pools))
        return True

    async def _reap(self) -> None:
        interval = min(max(self._idle_s / 4, 0.05), 30.0)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            idle = [key for key, pool in self._pools.items() if pool.in_use == 0 and now - pool.last_used >= self._idle_s]
            for key in idle:
                # Asked again: while an earlier pool of the list closed, this one may have been
                # closed elsewhere (deleted, evicted) or checked out again.
                pool = self._pools.get(key)
                if pool is None or pool.in_use or time.monotonic() - pool.last_used < self._idle_s:
                    continue
                del self._pools[key]
                log.info("user_pool_idle_closed", connection=key, pools=len(self._pools))
                self._closed(key)
                await _close(pool.engine, "idle", len(self._pools))

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        pools, self._pools = list(self._pools.values()), OrderedDict()
        for pool in pools:
            await _close(pool.engine, "shutdown", 0)


async def _close(engine: Engine, reason: str | None = None, left: int | None = None) -> None:
    if reason is not None:
        metrics.USER_POOL_CLOSES.labels(reason).inc()
    if left is not None:
        metrics.USER_POOLS.set(left)
    try:
        await engine.close()
    except Exception as exc:
        log.warning("user_pool_close_failed", connection=engine.name, error=type(exc).__name__)
