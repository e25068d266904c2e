"""Admission in the query service: a busy replica declines so another takes the query, then a bounded queue fair between users.

The Admission tests drive the real class on the event loop; the system test runs two real
query replicas of one slot each behind one gateway, against PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from services.query.admission import Admission
from shared.errors import ServiceError
from tests.client import browser, login, run_query
from tests.conftest import PostgresReader, SystemFactory
from tests.harness import Service


def eager(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """A task run at once up to its first wait: a queued acquire has joined its lane when this returns."""
    return asyncio.eager_task_factory(asyncio.get_running_loop(), coro)  # type: ignore[return-value]


async def test_a_freed_slot_goes_to_the_next_user_in_turn_not_to_the_busiest_users_next_query() -> None:
    admission = Admission(slots=1, queue_max=10, wait_s=10)
    await admission.acquire("holder", wait=True)
    served: asyncio.Queue[str] = asyncio.Queue()

    async def queued(user: str) -> None:
        await admission.acquire(user, wait=True)
        served.put_nowait(user)

    tasks = [eager(queued(user)) for user in ("ada", "ada", "ada", "grace")]
    assert admission.waiting == 4

    order = []
    for _ in tasks:
        admission.release()
        order.append(await served.get())
    await asyncio.gather(*tasks)

    assert order == ["ada", "grace", "ada", "ada"]
    assert admission.waiting == 0 and admission.running == 1


async def test_past_the_queue_bound_and_past_the_wait_the_answer_is_busy() -> None:
    admission = Admission(slots=1, queue_max=1, wait_s=0.2)
    await admission.acquire("holder", wait=True)
    with pytest.raises(ServiceError, match="another replica may take it"):
        await admission.acquire("ada", wait=False)  # declined: not queued at all
    assert admission.waiting == 0

    waiter = eager(admission.acquire("ada", wait=True))
    assert admission.waiting == 1
    with pytest.raises(ServiceError, match="QUERY_QUEUE_MAX") as full:
        await admission.acquire("grace", wait=True)
    assert full.value.code == "busy"
    with pytest.raises(ServiceError, match="QUERY_QUEUE_WAIT_S"):
        await waiter
    assert admission.waiting == 0 and admission.running == 1
    admission.release()
    assert admission.running == 0  # the slot went back: nobody waits any more


async def test_two_busy_replicas_serve_every_query_through_declines_and_the_queue(make_system: SystemFactory, pg_reader: PostgresReader) -> None:
    env = {"QUERY_DATABASE_URL": pg_reader.url, "QUERY_MAX_CONCURRENT": "1", "QUERY_QUEUE_MAX": "16", "QUERY_QUEUE_WAIT_S": "10"}
    system = make_system(**env)
    second = Service("query", system.service_env("query")).start()
    try:
        async with browser(system.url) as client:
            await login(client)
            sql = "SELECT count(*) AS n FROM generate_series(1, 2000000)"
            results = await asyncio.gather(*(run_query(client, sql) for _ in range(8)))
    finally:
        assert second.stop() == 0
    assert [response.status for response, _ in results] == [200] * 8, "no query was refused"
    for _, parts in results:
        assert any(isinstance(p, dict) and p.get("type") == "tool-output-available" and not p.get("preliminary") for p in parts), parts
    done = [len(replica.events("query_done")) for replica in (system.services["query"], second)]
    assert sum(done) == 8 and all(n > 0 for n in done), f"both replicas served: {done}"
