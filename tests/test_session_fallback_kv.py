"""The shared JetStream KV fallback's listing of what is left to write back, on the real NATS server.

The write-back of every replica lists the bucket while peers (and calls moving their own
entries back) remove entries from it; a listing that never answers leaves the replica
recovering forever, so `store_recovered` never comes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NATS

from services.session.fallback import KvFallback

ROUNDS = 100
LISTINGS = 5
HANG_S = 20.0
"""Not a timing: a listing that has not answered by then never will (it waits for a message that is gone)."""


@pytest.fixture(name="bucket")
async def bucket_fixture(nc: NATS) -> AsyncIterator[str]:
    name = f"fallback_{uuid.uuid4().hex[:10]}"
    yield name
    await nc.jetstream().delete_key_value(name)


@pytest.fixture(name="kv")
async def kv_fixture(nc: NATS, bucket: str) -> KvFallback:
    return await KvFallback.open(nc.jetstream(), bucket, 3600)


async def _remove_all(kv: KvFallback, keys: set[str]) -> None:
    for key in sorted(keys):  # as the write-back does: the version read, then a CAS delete and a purge
        entry = await kv.get(key, touch=False)
        assert entry is not None
        assert await kv.remove(key, entry.version)


async def _list_repeatedly(kv: KvFallback, round_: int) -> list[list[str]]:
    listings = []
    for _ in range(LISTINGS):
        try:
            listings.append(await asyncio.wait_for(kv.pending(), HANG_S))
        except TimeoutError:
            pytest.fail(f"round {round_}: listing the bucket never answered while entries were removed")
    return listings


async def test_listing_the_bucket_while_entries_are_removed_always_answers(kv: KvFallback) -> None:
    for round_ in range(ROUNDS):
        keys = {f"s{round_}-{i}" for i in range(5)}
        for key in sorted(keys):
            await kv.put(key, b"\x80")
        _, listings = await asyncio.gather(_remove_all(kv, keys), _list_repeatedly(kv, round_))
        assert all(set(listing) <= keys for listing in listings), listings
        assert await kv.pending() == [], "every removed entry is gone from the listing"


async def test_a_left_delete_marker_or_an_unreadable_entry_is_nothing_to_write_back(kv: KvFallback, nc: NATS, bucket: str) -> None:
    """Listed, either would keep the write-back waiting for an entry it can never move, until the bucket's TTL."""
    raw = await nc.jetstream().key_value(bucket)
    await kv.put("live", b"\x80")
    await kv.put("deleted", b"\x80")
    await raw.delete("deleted")  # a delete marker, as `remove` leaves when its purge fails
    await raw.put("garbled", b"not msgpack")
    assert await kv.pending() == ["live"]
    assert await kv.get("deleted", touch=False) is None and await kv.get("garbled", touch=False) is None
