"""Open a user's database: the SSRF guard, then the driver to the checked address, then the account check.

Every way of not reaching a database (an address that is not allowed, a name that does not
resolve, a closed port, a silent host) answers the same message after the same wait,
CONNECTIONS_CONNECT_TIMEOUT_S from the start, so the form cannot be used as a port scanner.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass

import asyncmy.errors
import asyncpg
import structlog

from services.query.connections.address import AddressPolicy, AddressRefused, Resolver, system_resolver
from services.query.engines.base import Engine, EngineSettings
from services.query.engines.mysql import MysqlEngine
from services.query.engines.postgres import PostgresEngine
from shared.contracts import ConnectionRef, ConnectionTls
from shared.errors import CONNECTION_FAILED, ServiceError

log = structlog.get_logger(__name__)

OPEN_EXTRA_S = 10.0
_PG_AUTH = (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)
_MY_AUTH = {1044, 1045, 1698}  # access denied for user / to database, auth plugin refused
_MY_UNKNOWN_DB = 1049
_MY_UNREACHABLE = {2002, 2003, 2005, 2006, 2013}


@dataclass(frozen=True)
class Target:
    """Where to connect: the name the user gave (kept for TLS) and the address it was checked as."""

    dialect: str
    host: str
    port: int
    database: str
    user: str
    tls: ConnectionTls


class PinnedHostContext(ssl.SSLContext):
    """Checks the server's certificate against the host name the user gave, though the driver connects to an address."""

    hostname: str | None = None

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = False, server_hostname: str | None = None, session: ssl.SSLSession | None = None) -> ssl.SSLObject:
        return super().wrap_bio(incoming, outgoing, server_side=server_side, server_hostname=self.hostname or server_hostname, session=session)


def tls_context(tls: ConnectionTls, host: str) -> ssl.SSLContext | None:
    """None for `disable`; encryption without verification for `require`; the CA (or the system's) and the host name for `verify-full`."""
    if tls.mode == "disable":
        return None
    context = PinnedHostContext(ssl.PROTOCOL_TLS_CLIENT)
    context.hostname = host
    if tls.mode == "verify-full":
        if tls.ca_pem:
            try:
                context.load_verify_locations(cadata=tls.ca_pem)
            except (ssl.SSLError, ValueError):
                raise ServiceError(CONNECTION_FAILED, "tls.ca_pem is not a PEM certificate") from None
        else:
            context.load_default_certs()
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def display_url(target: Target) -> str:
    """For logs and error messages: no password, the host as given."""
    return f"{target.dialect}://{target.user}@{host_port(target)}/{target.database}"


def host_port(target: Target) -> str:
    """host:port, an IPv6 address in brackets (once)."""
    host = f"[{target.host}]" if ":" in target.host and not target.host.startswith("[") else target.host
    return f"{host}:{target.port}"


class Opener:
    """Builds and opens the engine of a user's connection, or raises a ServiceError whose message is safe to show."""

    def __init__(self, policy: AddressPolicy, settings: EngineSettings, connect_timeout_s: float, resolver: Resolver | None = None) -> None:
        self._policy = policy
        self._settings = settings
        self._connect_timeout_s = connect_timeout_s
        self._resolver = resolver or system_resolver

    async def open(self, name: str, ref: ConnectionRef, target: Target, password: str) -> tuple[Engine, str]:
        """The engine, opened and its account checked, and the server's version; the caller closes the engine."""
        started = time.monotonic()
        try:
            address = await self._policy.resolve(target.host, target.port, self._resolver)
        except AddressRefused as exc:
            log.info("connection_address_refused", host=target.host, port=target.port, reason=str(exc))
            await self._unreachable(target, started)
        engine = self._engine(name, ref, target, str(address), password)
        try:
            # The driver gives up connecting after CONNECTIONS_CONNECT_TIMEOUT_S; this bounds the rest (catalog, account).
            async with asyncio.timeout(self._connect_timeout_s * 4 + OPEN_EXTRA_S):
                await engine.open()
                account = await engine.account()
                version = await engine.server_version()
        except BaseException as exc:
            await _close_quietly(engine)
            if not isinstance(exc, Exception):
                raise
            raise await self._failure(exc, target, started) from None
        if account is not None and account.findings:
            await _close_quietly(engine)
            raise ServiceError(
                CONNECTION_FAILED,
                f"the account {account.name!r} can do more than read ({'; '.join(account.findings[:5])}); connect with a read-only account (docs/query-account.md)",
            )
        return engine, version

    def _engine(self, name: str, ref: ConnectionRef, target: Target, address: str, password: str) -> Engine:
        context = tls_context(target.tls, target.host)
        engine: PostgresEngine | MysqlEngine
        if target.dialect == "postgresql":
            engine = PostgresEngine(name, display_url(target), self._settings)
            engine.connect_with(host=address, port=target.port, user=target.user, password=password, database=target.database, ssl=context if context is not None else False)
        else:
            engine = MysqlEngine(name, display_url(target), self._settings)
            engine.connect_with(host=address, port=target.port, user=target.user, password=password, database=target.database, ssl=context)
        engine.owner, engine.connection_id = ref.owner, ref.id
        return engine

    async def _unreachable(self, target: Target, started: float) -> None:
        """Wait out CONNECTIONS_CONNECT_TIMEOUT_S from `started`, then say the one thing every unreachable address hears."""
        await asyncio.sleep(max(0.0, started + self._connect_timeout_s - time.monotonic()))
        raise ServiceError(
            CONNECTION_FAILED,
            f"cannot reach a database at {host_port(target)}; check the host and the port (an address this service may not reach gets this same answer, see docs/connections.md)",
        )

    async def _failure(self, exc: Exception, target: Target, started: float) -> ServiceError:
        """What went wrong while connecting, as the user may be told it (never the password)."""
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
        if isinstance(exc, _PG_AUTH) or code in _MY_AUTH:
            return ServiceError(CONNECTION_FAILED, f"the database refused the user name or password for {target.user!r}")
        if isinstance(exc, asyncpg.InvalidCatalogNameError) or code == _MY_UNKNOWN_DB:
            return ServiceError(CONNECTION_FAILED, f"the database {target.database!r} does not exist on that server")
        if isinstance(exc, ssl.SSLError) or "SSL" in str(exc) or "TLS" in str(exc):
            return ServiceError(CONNECTION_FAILED, f"TLS ({target.tls.mode}) failed: {_tls_reason(exc)}")
        if isinstance(exc, ServiceError):
            return exc
        if isinstance(exc, (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError)) or code in _MY_UNREACHABLE or isinstance(exc, asyncmy.errors.OperationalError):
            log.info("connection_unreachable", host=target.host, port=target.port, reason=type(exc).__name__)
            await self._unreachable(target, started)
        return ServiceError(CONNECTION_FAILED, f"cannot open {display_url(target)}: {_text(exc)}")


def _tls_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return exc.verify_message or "the server's certificate was not accepted"
    text = _text(exc)
    if "rejected SSL upgrade" in text:
        return "the server does not offer TLS"
    return text


def _text(exc: BaseException) -> str:
    if len(exc.args) >= 2 and isinstance(exc.args[1], str):
        return exc.args[1]
    return str(exc) or type(exc).__name__


async def _close_quietly(engine: Engine) -> None:
    try:
        await engine.close()
    except Exception as exc:
        log.warning("connection_close_failed", source=engine.name, error=type(exc).__name__)
