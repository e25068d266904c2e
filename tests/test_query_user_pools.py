"""The query service's pools of users' own connections (services/query/connections/pools.py), on real PostgreSQL engines."""

from __future__ import annotations

import asyncio
import uuid

from services.query.connections.pools import UserPools
from services.query.engines.base import Engine, EngineSettings
from services.query.engines.postgres import PostgresEngine
from shared.contracts import ConnectionRef
from tests.conftest import PostgresReader
from tests.harness import eventually


async def _now(value: bool) -> bool:
    return value


async def test_the_idle_reaper_passes_over_a_pool_deleted_or_checked_out_while_it_closed_another(pg_reader: PostgresReader) -> None:
    """While the reaper closes one idle pool, a second is deleted and a third checked out: the reaper
    goes on (no KeyError ending it), leaves the checked-out pool open for its query, and closes it once idle."""

    async def open_engine(ref: ConnectionRef) -> Engine:
        engine = PostgresEngine(ref.id, pg_reader.url, EngineSettings(pool_size=1))
        await engine.open()
        engine.owner, engine.connection_id = ref.owner, ref.id
        return engine

    pools = UserPools(open_engine, max_pools=10, idle_s=0.3, max_per_user=10)
    first, deleted, reused = (ConnectionRef("ada", f"c{i}-{uuid.uuid4().hex[:8]}") for i in range(3))
    for engine in [await pools.checkout(ref) for ref in (first, deleted, reused)]:
        pools.checkin(engine)  # all three idle from the same moment: one pass of the reaper finds them together
    taken: list[Engine] = []
    acted: list[asyncio.Task[None]] = []

    async def meanwhile() -> None:
        taken.append(await pools.checkout(reused))  # found open: no wait, so before the reaper goes on
        await pools.close_connection(deleted.id)  # popped before its first wait

    def on_close(connection_id: str) -> None:
        if connection_id == first.id and not acted:  # the reaper is about to await the first pool's close
            acted.append(asyncio.create_task(meanwhile()))

    pools.on_close(on_close)
    pools.start()
    try:
        await eventually(lambda: _now(bool(acted) and acted[0].done()), "the first idle pool's close")
        await acted[0]
        [engine] = taken
        async with engine.query("SELECT 1", 10) as cursor:
            assert [tuple(row) for row in await cursor.fetch(10)] == [(1,)]
        assert pools.open_count == 1
        pools.checkin(engine)
        await eventually(lambda: _now(pools.open_count == 0), "the reaper closing the pool once idle again")
    finally:
        await pools.close()
