"""`query.connection.create/update/test`, the loader of users' pools, and the broadcast that closes a deleted connection's pools.

The query service is the only one that sees a password in the clear: it tests the settings,
seals the password (services/query/connections/seal.py) and hands the session service a
record with an opaque blob to store. A request names its owner (the gateway's signed-in
user); the session service finds records only under their owner, so another user's id is
not found.
"""

from __future__ import annotations

import datetime as dt
import secrets

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from services.query.connections.opener import Opener, Target, display_url
from services.query.connections.pools import UserPools
from services.query.connections.seal import VARIABLE, Keyring
from services.query.engines.base import Engine
from shared.bus import request
from shared.codec import decode_map
from shared.contracts import (
    ConnectionCreate,
    ConnectionFound,
    ConnectionGet,
    ConnectionList,
    ConnectionPut,
    ConnectionRecord,
    ConnectionRecords,
    ConnectionRef,
    ConnectionSettings,
    ConnectionTest,
    ConnectionTested,
    ConnectionUpdate,
    ConnectionView,
    Ok,
    Subjects,
)
from shared.errors import CONFLICT, CONNECTIONS_OFF, NOT_FOUND, ServiceError

log = structlog.get_logger(__name__)

STORE_TIMEOUT_S = 3.0


def connections_off() -> ServiceError:
    return ServiceError(CONNECTIONS_OFF, f"users' own database connections are off: set {VARIABLE} on the query service (docs/connections.md)")


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class ConnectionHandlers:
    """Create, change and test users' connections; open them for queries (through UserPools)."""

    def __init__(self, nc: NATS, subjects: Subjects, keys: Keyring | None, opener: Opener, *, operator_sources: frozenset[str], max_per_user: int) -> None:
        self._nc = nc
        self._subjects = subjects
        self._keys = keys
        self._opener = opener
        self._operator_sources = operator_sources
        self._max_per_user = max_per_user
        self.pools: UserPools | None = None

    @property
    def enabled(self) -> bool:
        return self._keys is not None

    def _keyring(self) -> Keyring:
        if self._keys is None:
            raise connections_off()
        return self._keys

    # --- the session service's store ---------------------------------------------------

    async def record(self, ref: ConnectionRef) -> ConnectionRecord:
        found = await request(self._nc, self._subjects.session_connection("get"), ConnectionGet(ref), timeout=STORE_TIMEOUT_S, reply=ConnectionFound)
        if found.record is None:
            raise ServiceError(NOT_FOUND, "no such connection")
        return found.record

    async def _put(self, record: ConnectionRecord, *, create: bool, expect_sealed: bytes | None = None) -> None:
        put = ConnectionPut(record, create=create, max_per_user=self._max_per_user, expect_sealed=expect_sealed)
        await request(self._nc, self._subjects.session_connection("put"), put, timeout=STORE_TIMEOUT_S, reply=Ok)

    async def broadcast_closed(self, ref: ConnectionRef) -> None:
        """Every query replica closes this connection's pools (they reopen with the stored settings on next use)."""
        await self._nc.publish(self._subjects.query_connection_closed, msgspec.msgpack.encode(ref))

    async def on_closed(self, msg: Msg) -> None:
        try:
            ref = msgspec.convert(decode_map(msg.data), ConnectionRef)
        except (msgspec.ValidationError, ServiceError, ValueError) as exc:
            log.warning("connection_closed_malformed", error=str(exc))
            return
        if self.pools is not None:
            await self.pools.close_connection(ref.id)

    # --- opening ------------------------------------------------------------------------

    async def _probe(self, name: str, ref: ConnectionRef, target: Target, password: str) -> str:
        """Open the database as it would be for a query, check its account, close it; the server's version."""
        engine, version = await self._opener.open(name, ref, target, password)
        await engine.close()
        return version

    async def load(self, ref: ConnectionRef) -> Engine:
        """UserPools' loader: the stored record, its password opened, the database opened and checked."""
        keys = self._keyring()
        record = await self.record(ref)
        password = keys.open(record.key_id, record.sealed, record.id, record.owner)
        engine, _ = await self._opener.open(record.name, ref, _target(record), password)
        return engine

    async def _check_room(self, owner: str, name: str) -> None:
        """Refuse a user at CONNECTIONS_MAX_PER_USER, or a name taken, before connecting anywhere on their behalf.

        The session service checks both again, atomically, when it stores the record.
        """
        held = (await request(self._nc, self._subjects.session_connection("list"), ConnectionList(owner), timeout=STORE_TIMEOUT_S, reply=ConnectionRecords)).records
        if any(record.name == name for record in held):
            raise ServiceError(CONFLICT, f"you already have a connection named {name!r}")
        if len(held) >= self._max_per_user:
            raise ServiceError(CONFLICT, f"you have {len(held)} connections, the most one user may keep (CONNECTIONS_MAX_PER_USER={self._max_per_user}); delete one first")

    def _check_name(self, name: str) -> None:
        if name in self._operator_sources:
            raise ServiceError(CONFLICT, f"{name!r} is the name of one of this service's own sources; choose another name")

    # --- handlers -----------------------------------------------------------------------

    async def create(self, req: ConnectionCreate, _msg: Msg) -> ConnectionView:
        keys = self._keyring()
        settings: ConnectionSettings = req.settings
        self._check_name(settings.name)
        await self._check_room(req.owner, settings.name)
        ref = ConnectionRef(req.owner, secrets.token_urlsafe(12))
        target = _target(settings)
        version = await self._probe(settings.name, ref, target, settings.password)
        key_id, sealed = keys.seal(settings.password, ref.id, ref.owner)
        record = ConnectionRecord(
            id=ref.id,
            owner=ref.owner,
            name=settings.name,
            dialect=settings.dialect,
            host=settings.host,
            port=settings.port,
            database=settings.database,
            user=settings.user,
            tls=settings.tls,
            server_version=version,
            created_at=now_iso(),
            key_id=key_id,
            sealed=sealed,
        )
        await self._put(record, create=True)
        log.info("connection_created", connection=ref.id, target=display_url(target), server_version=version)
        return record.view()

    async def update(self, req: ConnectionUpdate, _msg: Msg) -> ConnectionView:
        keys = self._keyring()
        record = await self.record(req.ref)
        changes = {name: value for name, value in msgspec.structs.asdict(req.changes).items() if value is not msgspec.UNSET}
        password = changes.pop("password", None)
        if "name" in changes:
            self._check_name(changes["name"])
        updated = msgspec.structs.replace(record, **changes)
        if password is not None or set(changes) - {"name"}:
            if password is None:
                password = keys.open(record.key_id, record.sealed, record.id, record.owner)
            version = await self._probe(updated.name, req.ref, _target(updated), password)
            key_id, sealed = keys.seal(password, record.id, record.owner)
            updated = msgspec.structs.replace(updated, server_version=version, key_id=key_id, sealed=sealed)
        await self._put(updated, create=False, expect_sealed=record.sealed)
        await self.broadcast_closed(req.ref)
        log.info("connection_updated", connection=record.id, fields=sorted([*changes, *(["password"] if password is not None else [])]))
        return updated.view()

    async def test(self, req: ConnectionTest, _msg: Msg) -> ConnectionTested:
        keys = self._keyring()
        record = await self.record(req.ref)
        password = keys.open(record.key_id, record.sealed, record.id, record.owner)
        version = await self._probe(record.name, req.ref, _target(record), password)
        return ConnectionTested(ok=True, server_version=version)


def _target(fields: ConnectionSettings | ConnectionRecord) -> Target:
    return Target(fields.dialect, fields.host, fields.port, fields.database, fields.user, fields.tls)
