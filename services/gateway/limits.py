"""The gateway's client of `session.limit`: rate limits and quotas shared by every replica."""

from __future__ import annotations

from collections.abc import Sequence

from nats.aio.client import Client as NATS

from shared.bus import request
from shared.contracts import LimitResult, LimitWindow, Subjects, convert_payload
from shared.errors import INTERNAL, ServiceError

Window = LimitWindow
"""One fixed window: `Window(name="minute", seconds=60, limit=10)`; limit 0 turns it off."""

__all__ = ["LimitResult", "Limiter", "Window"]


class Limiter:
    """Counts calls per key in fixed windows through the session service (one Redis command a call)."""

    def __init__(self, nc: NATS, subjects: Subjects, timeout: float) -> None:
        self._nc = nc
        self._subjects = subjects
        self._timeout = timeout

    async def hit(self, key: str, windows: Sequence[Window], *, consume: bool = True) -> LimitResult:
        """Count one call of `key` in every window, unless one is full; `consume=False` only reads.

        Raises ServiceError (bad_request for a malformed key or window, unavailable/timeout
        when no session replica answers).
        """
        payload = {
            "key": key,
            "windows": [{"name": w.name, "seconds": w.seconds, "limit": w.limit} for w in windows],
            "consume": consume,
        }
        reply = await request(self._nc, self._subjects.session_limit, payload, timeout=self._timeout)
        try:
            return convert_payload(reply, LimitResult)
        except ServiceError as exc:  # the session service answered something else: its bug, not the caller's
            raise ServiceError(INTERNAL, f"malformed session.limit reply: {exc.message}") from None
