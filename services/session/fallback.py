"""Where sessions live while Redis is down (or when no Redis is configured).

Two implementations of one small interface:

* `KvFallback`: a NATS JetStream key-value bucket (SESSION_KV_BUCKET) that every replica
  shares, so all replicas agree during an outage. The KV revision of an entry is its
  version: the stream sequence grows with every write, so it orders versions of a session
  across replicas without trusting their clocks.
* `MemoryFallback`: a bounded LRU dictionary in this process, used only when the NATS
  server has no JetStream. Replicas do not share it; its versions are local timestamps.

An entry holds the session bytes, or None for "deleted during the outage", so deletions
are written back to Redis too.
"""

from __future__ import annotations

import os
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import nats.errors
import nats.js.errors as jse
import structlog
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from services.session.metrics import MEMORY_EVICTIONS
from shared.codec import decode_map, encode
from shared.errors import ServiceError
from shared.logging import mask

log = structlog.get_logger(__name__)

Change = Callable[[bytes], bytes | None]
"""Turns stored session bytes into new ones; None leaves the entry as it is."""


@dataclass(frozen=True)
class Entry:
    value: bytes | None
    """The session's MessagePack bytes, or None when it was deleted."""
    version: int
    """Orders the versions of one session: newer is larger."""


class FallbackUnavailable(Exception):
    """Raised when the fallback store itself cannot be used (JetStream not answering)."""


class Fallback(Protocol):
    name: str
    """`jetstream` or `memory`: what session.ping reports while it serves."""
    shared: bool
    """True when every replica sees the same entries."""

    async def get(self, sid: str, *, touch: bool = True) -> Entry | None: ...
    async def put(self, sid: str, value: bytes | None) -> None: ...
    async def update(self, sid: str, change: Change) -> bytes | None: ...
    async def pending(self) -> list[str]: ...
    async def remove(self, sid: str, version: int) -> bool: ...
    async def close(self) -> None: ...


def replica_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


_KV_ERRORS = (jse.Error, nats.errors.Error, TimeoutError, OSError)
_WRONG_LAST_SEQUENCE = (10071, 10164)
_CAS_ATTEMPTS = 20


class KvFallback:
    """Sessions in a JetStream KV bucket, with compare-and-set updates."""

    name = "jetstream"
    shared = True

    def __init__(self, js: JetStreamContext, kv: KeyValue, bucket: str, lifetime_s: int) -> None:
        self._js = js
        self._kv = kv
        self._stream = f"KV_{bucket}"
        self._subject_prefix = f"$KV.{bucket}."
        self._lifetime = lifetime_s
        # The bucket's max age counts from an entry's last write, so a read rewrites an entry
        # that has aged a little, sliding its expiry like GETEX does, at a bounded cost.
        self._touch_after_s = min(max(lifetime_s // 10, 1), 3600)
        self._by = replica_name()

    @classmethod
    async def open(cls, js: JetStreamContext, bucket: str, lifetime_s: int, *, replicas: int = 1) -> KvFallback:
        """Bind to the bucket, creating it (history 1, TTL = session lifetime, NATS_JS_REPLICAS copies) if it is missing."""
        try:
            kv = await js.key_value(bucket)
        except jse.BucketNotFoundError:
            config = KeyValueConfig(
                bucket=bucket,
                description="DB Genie sessions while Redis is unavailable",
                history=1,
                ttl=float(lifetime_s),
                storage=StorageType.FILE,
                direct=True,
                replicas=replicas,
            )
            kv = await js.create_key_value(config)  # idempotent when another replica races us with the same config
        else:
            ttl = (await kv.status()).ttl
            if ttl and abs(ttl - lifetime_s) > 1:
                log.warning("kv_bucket_ttl_differs", bucket=bucket, bucket_ttl_s=ttl, session_lifetime_s=lifetime_s)
        return cls(js, kv, bucket, lifetime_s)

    def _encode(self, value: bytes | None) -> bytes:
        return encode({"v": value, "at": int(time.time()), "by": self._by})

    def _decode(self, sid: str, raw: bytes | None) -> tuple[bytes | None, int] | None:
        try:
            stored = decode_map(raw or b"")
        except ServiceError:
            log.warning("kv_entry_corrupt", sid=mask(sid))
            return None
        value = stored.get("v")
        if value is not None and not isinstance(value, bytes):
            log.warning("kv_entry_corrupt", sid=mask(sid))
            return None
        return value, int(stored.get("at") or 0)

    async def _read(self, sid: str) -> tuple[bytes | None, int, int] | None:
        """(value, written at, revision), or None when the bucket has nothing for sid."""
        try:
            entry = await self._kv.get(sid)
        except jse.KeyNotFoundError:
            return None
        except _KV_ERRORS as exc:
            raise FallbackUnavailable(f"JetStream KV get failed: {type(exc).__name__}: {exc}") from exc
        decoded = self._decode(sid, entry.value)
        if decoded is None or entry.revision is None:
            return None
        return decoded[0], decoded[1], entry.revision

    async def get(self, sid: str, *, touch: bool = True) -> Entry | None:
        found = await self._read(sid)
        if found is None:
            return None
        value, at, revision = found
        if touch and value is not None and time.time() - at > self._touch_after_s:
            try:
                revision = await self._kv.update(sid, self._encode(value), last=revision)
            except jse.KeyWrongLastSequenceError:
                pass  # someone wrote it meanwhile, which slid the expiry anyway
            except _KV_ERRORS as exc:
                log.warning("kv_touch_failed", sid=mask(sid), error=f"{type(exc).__name__}: {exc}")
        return Entry(value, revision)

    async def put(self, sid: str, value: bytes | None) -> None:
        try:
            await self._kv.put(sid, self._encode(value))
        except _KV_ERRORS as exc:
            raise FallbackUnavailable(f"JetStream KV put failed: {type(exc).__name__}: {exc}") from exc

    async def update(self, sid: str, change: Change) -> bytes | None:
        for _ in range(_CAS_ATTEMPTS):
            found = await self._read(sid)
            if found is None or found[0] is None:
                return None
            new = change(found[0])
            if new is None:
                return None
            try:
                await self._kv.update(sid, self._encode(new), last=found[2])
                return new
            except jse.KeyWrongLastSequenceError:
                continue  # another call changed it first: apply the change to the newer value
            except _KV_ERRORS as exc:
                raise FallbackUnavailable(f"JetStream KV update failed: {type(exc).__name__}: {exc}") from exc
        raise FallbackUnavailable(f"session {mask(sid)} changed {_CAS_ATTEMPTS} times while being patched")

    async def pending(self) -> list[str]:
        """The keys that hold an entry to write back, from one STREAM.INFO request (it has a timeout).

        Not `KeyValue.keys()`: its watcher waits for a message marked as the last one, and never
        returns when that message is purged before it is delivered, as `remove` does while a
        peer (or a call moving its own entry back) lists the bucket. A subject whose last message
        is a delete marker (its purge failed) or an unreadable entry holds nothing to write back,
        so it is left out: the write-back would otherwise wait for it until the bucket's TTL.
        The server lists at most 100,000 subjects per request; the write-back asks again.
        """
        try:
            info = await self._js.stream_info(self._stream, subjects_filter=self._subject_prefix + ">")
        except _KV_ERRORS as exc:
            raise FallbackUnavailable(f"JetStream KV listing failed: {type(exc).__name__}: {exc}") from exc
        keys = [subject.removeprefix(self._subject_prefix) for subject in info.state.subjects or {}]
        return [key for key in keys if await self._read(key) is not None]

    async def remove(self, sid: str, version: int) -> bool:
        """Remove the entry if it is still at `version`; False when it changed meanwhile.

        A CAS delete marker, then a purge of that subject up to the marker, so no marker
        lingers for the bucket's whole TTL and a newer write (after the marker) survives.
        """
        subject = self._subject_prefix + sid
        try:
            ack = await self._js.publish(subject, b"", headers={"KV-Operation": "DEL", "Nats-Expected-Last-Subject-Sequence": str(version)})
        except jse.APIError as exc:
            if exc.err_code in _WRONG_LAST_SEQUENCE:
                return False
            raise FallbackUnavailable(f"JetStream KV delete failed: {exc}") from exc
        except _KV_ERRORS as exc:
            raise FallbackUnavailable(f"JetStream KV delete failed: {type(exc).__name__}: {exc}") from exc
        try:
            await self._js.purge_stream(self._stream, subject=subject, seq=ack.seq + 1)
        except _KV_ERRORS as exc:  # the marker stays until the bucket TTL; harmless
            log.warning("kv_purge_failed", sid=mask(sid), error=f"{type(exc).__name__}: {exc}")
        return True

    async def close(self) -> None:
        return None


@dataclass
class _Item:
    value: bytes | None
    version: int
    expires: float


class MemoryFallback:
    """Sessions in this process only: an LRU dictionary bounded in entries, each with a TTL."""

    name = "memory"
    shared = False

    def __init__(self, max_entries: int, lifetime_s: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._items: OrderedDict[str, _Item] = OrderedDict()
        self._max = max_entries
        self._lifetime = lifetime_s
        self._clock = clock
        self._stamp = 0
        self._warned_full = False

    def _version(self) -> int:
        # Wall-clock nanoseconds, made strictly increasing: comparable (roughly) with other
        # replicas' versions when they write the same session back.
        self._stamp = max(self._stamp + 1, time.time_ns())
        return self._stamp

    def __len__(self) -> int:
        return len(self._items)

    def _live(self, sid: str) -> _Item | None:
        item = self._items.get(sid)
        if item is None:
            return None
        if item.expires <= self._clock():
            del self._items[sid]
            return None
        return item

    def _store(self, sid: str, value: bytes | None) -> None:
        self._items[sid] = _Item(value, self._version(), self._clock() + self._lifetime)
        self._items.move_to_end(sid)
        while len(self._items) > self._max:
            evicted, _ = self._items.popitem(last=False)
            MEMORY_EVICTIONS.inc()
            if not self._warned_full:
                self._warned_full = True
                log.warning("memory_store_full", max_entries=self._max, evicted=mask(evicted), hint="raise SESSION_MEMORY_MAX_ENTRIES or enable JetStream")

    async def get(self, sid: str, *, touch: bool = True) -> Entry | None:
        item = self._live(sid)
        if item is None:
            return None
        if touch and item.value is not None:
            item.expires = self._clock() + self._lifetime
            self._items.move_to_end(sid)
        return Entry(item.value, item.version)

    async def put(self, sid: str, value: bytes | None) -> None:
        self._store(sid, value)

    async def update(self, sid: str, change: Change) -> bytes | None:
        item = self._live(sid)
        if item is None or item.value is None:
            return None
        new = change(item.value)
        if new is not None:
            self._store(sid, new)
        return new

    async def pending(self) -> list[str]:
        now = self._clock()
        return [sid for sid, item in self._items.items() if item.expires > now]

    async def remove(self, sid: str, version: int) -> bool:
        item = self._items.get(sid)
        if item is None:
            return True
        if item.version != version:
            return False
        del self._items[sid]
        return True

    async def close(self) -> None:
        self._items.clear()
