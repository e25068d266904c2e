"""The system prompt of a turn, built from the query service's sources, dialects and schema overview, cached briefly.

Every turn needs it before its first model call, so it is kept for CACHE_S per source
(the query service itself caches a schema for QUERY_SCHEMA_CACHE_S): a turn then costs
no NATS round trip for it, and a schema change shows within seconds. Past CACHE_S, and up
to STALE_S more, a turn still gets the kept prompt at once while one background fetch
renews it: only a turn after a long idle spell (or the first one) waits for the query service.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog

from services.gateway.chat import prompt
from services.gateway.clients import QueryClient
from shared.contracts import ConnectionRef, SchemaReply
from shared.errors import BAD_REQUEST, UNAVAILABLE, ServiceError

log = structlog.get_logger(__name__)

CACHE_S = 10.0
STALE_S = 60.0
TIMEOUT_S = 5.0


@dataclass(frozen=True)
class _Entry:
    fetched: float
    sources: tuple[str, ...]
    dialects: dict[str, str]
    default: str
    schema: dict[str, Any] | None
    complete: bool  # with the schema overview; a prompt without it is fetched again for the next turn

    def fresh(self, now: float) -> bool:
        return self.complete and now < self.fetched + CACHE_S

    def usable(self, now: float) -> bool:
        """Still served at once, while a background fetch renews it."""
        return self.complete and now < self.fetched + CACHE_S + STALE_S


class PromptContext:
    """System prompts per source, fetched over NATS at most every CACHE_S."""

    def __init__(self, query: QueryClient, schema_max_chars: int) -> None:
        self._query = query
        self._schema_max_chars = schema_max_chars
        self._entries: dict[str | None, _Entry] = {}
        self._renewing: dict[str | None, asyncio.Task[None]] = {}

    async def system_prompt(self, source: str | None, own: Mapping[str, str] | None = None, connection: ConnectionRef | None = None) -> str:
        """The system message for a turn on `source` (None: the default); bad_request for an unknown source.

        `own`: the user's own connections (name -> dialect), listed too; `connection`: the one
        `source` names, whose schema overview is then read for this turn (never cached across users).
        """
        if connection is not None:
            return await self._own_prompt(source or "", own or {}, connection)
        entry = self._entries.get(source)
        now = time.monotonic()
        if entry is None or not entry.usable(now):
            entry = await self._fetch(source)
        elif not entry.fresh(now) and source not in self._renewing:
            self._renewing[source] = asyncio.create_task(self._renew(source))
        if source is not None and source not in entry.sources:
            raise ServiceError(BAD_REQUEST, f"unknown source {source!r}; the sources are {', '.join([*entry.sources, *(own or {})])}")
        return prompt.system_prompt(entry.dialects, entry.default, entry.schema, self._schema_max_chars, own)

    async def _own_prompt(self, source: str, own: Mapping[str, str], connection: ConnectionRef) -> str:
        ping, overview = await asyncio.gather(
            self._query.ping(TIMEOUT_S),
            self._query.schema(source, None, TIMEOUT_S, connection=connection),
            return_exceptions=True,
        )
        if isinstance(ping, BaseException):
            raise ping if isinstance(ping, ServiceError) else ServiceError(UNAVAILABLE, "the query service did not answer")
        schema = msgspec.to_builtins(overview) if isinstance(overview, SchemaReply) else None
        if schema is None:
            log.warning("chat_schema_unavailable", source="connection", error=getattr(overview, "message", type(overview).__name__))
        operator = {name: str(ping.dialects.get(name, "")) for name in ping.sources if name not in own}
        return prompt.system_prompt(operator, source, schema, self._schema_max_chars, own)

    async def close(self) -> None:
        """Stop the background fetches still under way."""
        for task in self._renewing.values():
            task.cancel()
        await asyncio.gather(*self._renewing.values(), return_exceptions=True)

    async def _renew(self, source: str | None) -> None:
        try:
            entry = await self._fetch(source)
            if source is not None and source not in entry.sources:  # the source is gone: refuse it from now on
                self._entries.pop(source, None)
        except ServiceError as exc:  # the kept prompt serves until STALE_S; then turns wait, and fail, on their own
            log.warning("chat_context_renewal_failed", source=source, error=exc.message)
        except Exception:
            log.exception("chat_context_renewal_failed", source=source)
        finally:
            self._renewing.pop(source, None)

    async def _fetch(self, source: str | None) -> _Entry:
        ping, overview = await asyncio.gather(
            self._query.ping(TIMEOUT_S),
            self._query.schema(source, None, TIMEOUT_S),
            return_exceptions=True,
        )
        if isinstance(ping, BaseException):
            raise ping if isinstance(ping, ServiceError) else ServiceError(UNAVAILABLE, "the query service did not answer")
        names = tuple(ping.sources)
        dialects = ping.dialects
        default = ping.default or (names[0] if names else "default")
        schema = msgspec.to_builtins(overview) if isinstance(overview, SchemaReply) else None
        if schema is None:
            # Without the overview the model calls describe_schema itself; the turn goes on.
            log.warning("chat_schema_unavailable", source=source, error=getattr(overview, "message", type(overview).__name__))
        entry = _Entry(time.monotonic(), names, {name: str(dialects.get(name, "")) for name in names}, default, schema, complete=schema is not None)
        if source is None or source in names:
            self._entries[source] = entry
        return entry
