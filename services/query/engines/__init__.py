"""The configured sources, each behind an Engine that is opened on first use and closed on shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import structlog

from services.query.config import url_scheme
from services.query.engines.base import Cursor, Engine, EngineSettings
from shared.bus import redact_url
from shared.errors import UNAVAILABLE, UNKNOWN_SOURCE, ServiceError

__all__ = ["Cursor", "Engine", "EngineSettings", "Sources", "create_engine", "engine_class"]

log = structlog.get_logger(__name__)


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
    """Named sources; `engine(name)` opens that source's engine the first time it is asked for."""

    def __init__(self, urls: Mapping[str, str], settings: EngineSettings, default: str = "default") -> None:
        self._engines = {name: create_engine(name, url, settings) for name, url in urls.items()}
        self._opened: dict[str, Engine] = {}
        self._locks = {name: asyncio.Lock() for name in urls}
        self.default = default

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

    async def open(self, engine: Engine) -> Engine:
        if engine.name in self._opened:
            return engine
        async with self._locks[engine.name]:
            if engine.name not in self._opened:
                try:
                    await engine.open()
                except ServiceError:
                    raise
                except Exception as exc:
                    raise ServiceError(UNAVAILABLE, f"cannot open source {engine.name!r} ({redact_url(engine.url)}): {exc}") from None
                self._opened[engine.name] = engine
                log.info("source_opened", source=engine.name, dialect=engine.dialect, url=redact_url(engine.url))
        return engine

    async def close(self) -> None:
        for name, engine in list(self._opened.items()):
            try:
                await engine.close()
            except Exception as exc:
                log.warning("source_close_failed", source=name, error=str(exc) or type(exc).__name__)
        self._opened.clear()
