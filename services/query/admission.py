"""Admission of queries to a replica: QUERY_MAX_CONCURRENT slots, and a bounded queue, fair between users, for the rest.

A request that may not wait (the gateway's first tries) is declined at once when every slot
is taken, so the gateway asks again and NATS's queue group hands it to another replica. A
request that may wait joins this replica's queue: each user has a lane, and a freed slot
goes to the next lane in turn, so one user's burst never starves another user. Past
QUERY_QUEUE_MAX waiting, or after QUERY_QUEUE_WAIT_S, the answer is `busy` (HTTP 503 with
Retry-After).
"""

from __future__ import annotations

import asyncio
from collections import deque

from shared.errors import BUSY, ServiceError


def busy(slots: int, queue_max: int, *, waited: bool = False) -> ServiceError:
    why = "no slot came free while it waited (QUERY_QUEUE_WAIT_S)" if waited else f"its queue of {queue_max} is full (QUERY_QUEUE_MAX)"
    return ServiceError(BUSY, f"this query service replica is running its limit of {slots} queries (QUERY_MAX_CONCURRENT) and {why}; retry in a moment")


class Admission:
    """Slots for running queries and the fair queue for them; release() once per slot acquired."""

    def __init__(self, slots: int, queue_max: int, wait_s: float) -> None:
        self._slots = slots
        self._free = slots
        self._queue_max = queue_max
        self._wait_s = wait_s
        self._lanes: dict[str, deque[asyncio.Future[None]]] = {}  # insertion order is the turn order
        self.waiting = 0

    @property
    def running(self) -> int:
        return self._slots - self._free

    async def acquire(self, user: str, *, wait: bool) -> None:
        """Take a slot, waiting in `user`'s lane if `wait`; raises ServiceError(BUSY) when none comes."""
        if self._free > 0 and not self.waiting:
            self._free -= 1
            return
        if not wait:
            raise ServiceError(BUSY, f"this query service replica is running its limit of {self._slots} queries (QUERY_MAX_CONCURRENT); another replica may take it")
        if self.waiting >= self._queue_max:
            raise busy(self._slots, self._queue_max)
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        lane = self._lanes.setdefault(user, deque())
        lane.append(granted)
        self.waiting += 1
        try:
            await asyncio.wait_for(asyncio.shield(granted), self._wait_s)
        except (TimeoutError, asyncio.CancelledError) as exc:
            if granted.done() and not granted.cancelled():
                self.release()  # the slot came in the same instant: hand it on
            else:
                granted.cancel()
                self._forget(user, granted)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise busy(self._slots, self._queue_max, waited=True) from None

    def _forget(self, user: str, granted: asyncio.Future[None]) -> None:
        lane = self._lanes.get(user)
        if lane is not None and granted in lane:
            lane.remove(granted)
            self.waiting -= 1
            if not lane:
                del self._lanes[user]

    def release(self) -> None:
        """Free a slot: to the next user in turn who waits, else back to the pool."""
        while self._lanes:
            user = next(iter(self._lanes))
            lane = self._lanes.pop(user)
            granted = lane.popleft()
            self.waiting -= 1
            if lane:
                self._lanes[user] = lane  # to the back of the turn order
            if not granted.done():
                granted.set_result(None)
                return
        self._free += 1
