"""The configured sources, each behind an Engine that is opened on first use and closed on shutdown."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import structlog

from services.query.config import url_scheme
from services.query.engines.base import Cursor, Engine, EngineSettings
from services.query.privileges import Account, refusal_message
from shared.bus import redact_url
from shared.contracts import Caller
from shared.errors import QUERY_REFUSED, UNAVAILABLE, UNKNOWN_SOURCE, ServiceError

__all__ = ["Cursor", "Engine", "EngineSettings", "Sources", "create_engine", "engine_class"]

log = structlog.get_logger(__name__)

# A source refused for its account's privileges is asked again after this long, so that
# revoking the privilege takes effect without a restart.
REFUSAL_RECHECK_S = 30.0


def engine_class(url: str) -> type[Engine]:
    scheme = url_scheme(url)
    if scheme == "sqlite":
        from services.query.engines.sqlite import SqliteEngine

        return SqliteEngine
    if scheme in ("postgresql", "postgres"):
        from services.query.engines.postgres import PostgresEngine

        return PostgresEngine
    if scheme in ("mysql", "mariadb"):
        from services.query.engines.mysql import MysqlEngine

        return MysqlEngine
    raise ValueError(f"unsupported database URL scheme {scheme!r}")


def create_engine(name: str, url: str, settings: EngineSettings) -> Engine:
    return engine_class(url)(name, url, settings)


class Sources:
    """Named sources; `engine(name)` opens that source's engine the first time it is asked for.

    Opening a source checks its database account (docs/query-account.md): an account that
    can do more than read is refused unless `allow_privileged`, and the refused source
    answers every query with that error (the other sources are served as usual).
    """

    def __init__(
        self,
        urls: Mapping[str, str],
        settings: EngineSettings,
        default: str = "default",
        *,
        allow_privileged: bool = False,
        roles: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        self._engines = {name: create_engine(name, url, settings) for name, url in urls.items()}
        self._opened: dict[str, Engine] = {}
        self._refused: dict[str, tuple[float, ServiceError]] = {}
        self._locks = {name: asyncio.Lock() for name in urls}
        self.default = default
        self.allow_privileged = allow_privileged
        # ACCESS_POLICY's roles per source: each is checked when the source opens, and only these are taken.
        self.roles = dict(roles or {})

    @property
    def names(self) -> list[str]:
        return sorted(self._engines)

    def resolve(self, name: str | None) -> Engine:
        """The engine for `name` (the default source for None or ""), not yet opened."""
        key = name or self.default
        engine = self._engines.get(key)
        if engine is None:
            raise ServiceError(UNKNOWN_SOURCE, f"unknown source {key!r}; known: {', '.join(self.names)}")
        return engine

    def check_caller(self, engine: Engine, caller: Caller | None) -> None:
        """Refuse a role that ACCESS_POLICY does not name for this source (the gateway only sends those)."""
        if caller is not None and caller.role is not None and caller.role not in self.roles.get(engine.name, ()):
            raise ServiceError(QUERY_REFUSED, f"the role {caller.role!r} is not one ACCESS_POLICY names for source {engine.name!r}")

    async def _findings(self, engine: Engine) -> tuple[Account | None, tuple[str, ...]]:
        """The account, and everything it or the policy's roles for this source may do beyond reading."""
        account = await engine.account()
        findings = list(account.findings) if account is not None else []
        for role in self.roles.get(engine.name, ()):
            findings += await engine.role_findings(role)
        return account, tuple(findings)

    async def open(self, engine: Engine) -> Engine:
        if engine.name in self._opened:
            return engine
        async with self._locks[engine.name]:
            if engine.name in self._opened:
                return engine
            refused = self._refused.get(engine.name)
            if refused is not None and time.monotonic() < refused[0]:
                raise ServiceError(refused[1].code, refused[1].message)
            try:
                await engine.open()
                account, findings = await self._findings(engine)
            except BaseException as exc:  # cancelled too: a half-opened engine is closed
                await self._close(engine)
                if isinstance(exc, ServiceError) or not isinstance(exc, Exception):
                    raise
                # Not knowing the account's privileges is no better than knowing them bad.
                raise ServiceError(UNAVAILABLE, f"cannot open source {engine.name!r} ({redact_url(engine.url)}) or check its account: {str(exc) or type(exc).__name__}") from None
            if findings:
                name = account.name if account is not None else engine.dialect
                if not self.allow_privileged:
                    await self._close(engine)
                    error = ServiceError(UNAVAILABLE, refusal_message(engine.name, name, findings))
                    self._refused[engine.name] = (time.monotonic() + REFUSAL_RECHECK_S, error)
                    log.error("source_refused", source=engine.name, account=name, privileges=list(findings), docs="docs/query-account.md")
                    raise error
                log.warning("source_privileged", source=engine.name, account=name, privileges=list(findings), override="QUERY_ALLOW_PRIVILEGED")
            self._refused.pop(engine.name, None)
            self._opened[engine.name] = engine
            log.info("source_opened", source=engine.name, dialect=engine.dialect, url=redact_url(engine.url), account=account.name if account else None)
        return engine

    async def open_all(self) -> None:
        """Open every source once, at start, so that a refused or unreachable one is logged before anyone asks for it."""
        for name in self.names:
            try:
                await self.open(self._engines[name])
            except ServiceError as exc:
                if name not in self._refused:  # a refusal has logged itself
                    log.warning("source_unavailable", source=name, error=exc.message)

    async def _close(self, engine: Engine) -> None:
        try:
            await engine.close()
        except Exception as exc:
            log.warning("source_close_failed", source=engine.name, error=str(exc) or type(exc).__name__)

    async def close(self) -> None:
        for name, engine in list(self._opened.items()):
            try:
                await engine.close()
            except Exception as exc:
                log.warning("source_close_failed", source=name, error=str(exc) or type(exc).__name__)
        self._opened.clear()
