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
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog

from services.gateway.chat import prompt
from services.gateway.clients import QueryClient
from shared.access import Grant, unknown_source
from shared.contracts import ConnectionRef, QueryPong, SchemaReply
from shared.errors import UNAVAILABLE, ServiceError

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


_Key = tuple[str, str | None]
"""A source and the database role its schema is read as (ACCESS_POLICY)."""


class PromptContext:
    """System prompts per source and role, fetched over NATS at most every CACHE_S; each lists only the caller's sources."""

    def __init__(self, query: QueryClient, schema_max_chars: int) -> None:
        self._query = query
        self._schema_max_chars = schema_max_chars
        self._entries: dict[_Key, _Entry] = {}
        self._renewing: dict[_Key, asyncio.Task[None]] = {}

    async def system_prompt(
        self, grant: Grant | None, visible: Callable[[Sequence[str]], Collection[str]], own: Mapping[str, str] | None = None, connection: ConnectionRef | None = None, source: str | None = None
    ) -> str:
        """The system message for a turn on the granted source; `visible` picks the sources this user may use.

        `own`: the user's own databases (name -> dialect), listed too; with `connection`, the turn is on
        the own database named `source` (`grant` None), whose overview is read for it, never cached.
        unknown_source when the source does not exist."""
        if connection is not None:
            return await self._own_prompt(source or "", visible, own or {}, connection)
        assert grant is not None
        key = (grant.source, grant.role)
        entry = self._entries.get(key)
        now = time.monotonic()
        if entry is None or not entry.usable(now):
            entry = await self._fetch(key)
        elif not entry.fresh(now) and key not in self._renewing:
            self._renewing[key] = asyncio.create_task(self._renew(key))
        if grant.source not in entry.sources:
            raise unknown_source(grant.source)
        shown = visible(entry.sources)
        sources = {name: entry.dialects.get(name, "") for name in entry.sources if name in shown and name not in (own or {})}
        return prompt.system_prompt(sources, entry.default, entry.schema, self._schema_max_chars, own)

    async def _own_prompt(self, source: str, visible: Callable[[Sequence[str]], Collection[str]], own: Mapping[str, str], connection: ConnectionRef) -> str:
        ping, schema = await self._ping_and_overview(source, "connection", connection=connection)
        shown = visible(ping.sources)
        operator = {name: str(ping.dialects.get(name, "")) for name in ping.sources if name in shown and name not in own}
        return prompt.system_prompt(operator, source, schema, self._schema_max_chars, own)

    async def _ping_and_overview(self, source: str, log_source: str, *, role: str | None = None, connection: ConnectionRef | None = None) -> tuple[QueryPong, Any]:
        """The query service's sources and `source`'s schema overview, asked at once. No answer to the ping fails the turn;
        without the overview (None) the model calls describe_schema itself and the turn goes on."""
        ping, overview = await asyncio.gather(
            self._query.ping(TIMEOUT_S),
            self._query.schema(source, None, TIMEOUT_S, role=role, connection=connection),
            return_exceptions=True,
        )
        if isinstance(ping, BaseException):
            raise ping if isinstance(ping, ServiceError) else ServiceError(UNAVAILABLE, "the query service did not answer")
        if isinstance(overview, SchemaReply):
            return ping, msgspec.to_builtins(overview)
        log.warning("chat_schema_unavailable", source=log_source, error=getattr(overview, "message", type(overview).__name__))
        return ping, None

    async def close(self) -> None:
        """Stop the background fetches still under way."""
        for task in self._renewing.values():
            task.cancel()
        await asyncio.gather(*self._renewing.values(), return_exceptions=True)

    async def _renew(self, key: _Key) -> None:
        source = key[0]
        try:
            entry = await self._fetch(key)
            if source not in entry.sources:  # the source is gone: refuse it from now on
                self._entries.pop(key, None)
        except ServiceError as exc:  # the kept prompt serves until STALE_S; then turns wait, and fail, on their own
            log.warning("chat_context_renewal_failed", source=source, error=exc.message)
        except Exception:
            log.exception("chat_context_renewal_failed", source=source)
        finally:
            self._renewing.pop(key, None)

    async def _fetch(self, key: _Key) -> _Entry:
        source, role = key
        ping, schema = await self._ping_and_overview(source, source, role=role)
        names = tuple(ping.sources)
        dialects = ping.dialects
        default = ping.default or (names[0] if names else "default")
        entry = _Entry(time.monotonic(), names, {name: str(dialects.get(name, "")) for name in names}, default, schema, complete=schema is not None)
        if source in names:
            self._entries[key] = entry
        return entry
