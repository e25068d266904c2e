"""The audit trail's JetStream stream: its name, how it is declared, and how events are read back (filtered).

The gateway publishes to it (services/gateway/audit.py); `GET /api/audit` and the
`admin audit` command read it through `read_events`. Both name it the same way:
AUDIT_STREAM, else `default_stream(NATS_SUBJECT_PREFIX)`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from shared.config import DEFAULT_SUBJECT_PREFIX, env_str
from shared.contracts import AUDIT_DECODER, AuditEvent, Subjects
from shared.errors import ConfigError

MAX_READ = 10_000
"""At most this many events in one read (the newest of those that match)."""
FETCH_BATCH = 256
FETCH_TIMEOUT_S = 1.0

DEFAULT_STREAM = "AUDIT"
"""The audit stream under the default subject prefix."""
_STREAM_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def default_stream(prefix: str) -> str:
    """The audit stream of a subject prefix when AUDIT_STREAM is unset: `AUDIT` for the default prefix, else `AUDIT_<prefix>`.

    Deployments sharing one NATS under different prefixes then each own a stream (a stream name
    has one owner, with one set of subjects). A prefix with characters a stream name cannot hold
    (`.`) has them turned into `_` and gets a short hash of itself, so `a.b` and `a_b` stay apart.
    """
    if prefix == DEFAULT_SUBJECT_PREFIX:
        return DEFAULT_STREAM
    safe = _UNSAFE.sub("_", prefix)
    name = f"{DEFAULT_STREAM}_{safe}"
    if safe != prefix or len(name) > 64:
        name = f"{DEFAULT_STREAM}_{safe[:48]}_{hashlib.sha256(prefix.encode()).hexdigest()[:8]}"
    return name


def stream_name(name: str, raw: str) -> str:
    """A JetStream stream name read from variable `name`; a ConfigError naming it otherwise."""
    if not _STREAM_NAME.fullmatch(raw):
        raise ConfigError(f"{name} must be 1-64 letters, digits, '_' or '-', got {raw!r}")
    return raw


def read_stream(env: Mapping[str, str], prefix: str) -> str:
    """The audit stream as the gateway names it: AUDIT_STREAM when set, else the prefix's default stream."""
    raw = env_str(env, "AUDIT_STREAM", "")
    return stream_name("AUDIT_STREAM", raw) if raw else default_stream(prefix)


def stream_config(name: str, subjects: Subjects, *, replicas: int = 1, max_age_s: float = 0, max_bytes: int = -1) -> StreamConfig:
    """AUDIT: file storage, the oldest events go first past `max_age_s` (0: never) or `max_bytes` (-1: no limit)."""
    return StreamConfig(
        name=name,
        subjects=[subjects.audit_all],
        storage=StorageType.FILE,
        num_replicas=replicas,
        max_age=max_age_s or None,
        max_bytes=max_bytes,
        duplicate_window=120.0,
    )


@dataclass(frozen=True)
class AuditFilter:
    """Which events to read: by user id or email, source, kind, and time (seconds since the epoch)."""

    user: str | None = None
    source: str | None = None
    kind: str | None = None
    since: float | None = None
    limit: int = 1000

    def matches(self, event: AuditEvent) -> bool:
        if self.user is not None and self.user not in (event.user_id, event.email):
            return False
        if self.kind is not None and event_kind(event) != self.kind:
            return False
        if self.source is not None and getattr(event, "source", None) != self.source:
            return False
        return self.since is None or event.time >= self.since


def parse_since(raw: str) -> float:
    """A time as seconds since the epoch, or an ISO 8601 time (UTC when no zone is given); ValueError otherwise."""
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        parsed = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"give an ISO 8601 time or seconds since the epoch, got {raw[:40]!r}") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)).timestamp()


def event_kind(event: AuditEvent) -> str:
    """The event's tag (`query`, `sign_in`, ...)."""
    return type(event).__struct_config__.tag  # type: ignore[return-value]


async def read_events(nc: NATS, stream: str, subjects: Subjects, wanted: AuditFilter) -> list[AuditEvent]:
    """The newest `wanted.limit` events that match, oldest first, through an ephemeral pull consumer."""
    js = nc.jetstream()
    config = ConsumerConfig(ack_policy=AckPolicy.NONE, inactive_threshold=30.0, deliver_policy=DeliverPolicy.ALL)
    if wanted.since is not None:
        config.deliver_policy = DeliverPolicy.BY_START_TIME
        config.opt_start_time = dt.datetime.fromtimestamp(wanted.since, dt.UTC).isoformat().replace("+00:00", "Z")
    subject = subjects.audit(wanted.kind) if wanted.kind else subjects.audit_all
    sub = await js.pull_subscribe(subject, stream=stream, config=config)
    found: list[AuditEvent] = []
    try:
        while True:
            try:
                messages = await sub.fetch(FETCH_BATCH, timeout=FETCH_TIMEOUT_S)
            except TimeoutError:
                break
            for msg in messages:
                try:
                    event = AUDIT_DECODER.decode(msg.data)
                except msgspec.DecodeError:
                    continue  # not ours: nothing else publishes here, but a reader must not fail on it
                if wanted.matches(event):
                    found.append(event)
                    if len(found) > wanted.limit:
                        del found[0]
            if messages and messages[-1].metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return found


def as_record(event: AuditEvent) -> dict[str, object]:
    """An event as a JSON object, `kind` first."""
    record: dict[str, object] = msgspec.to_builtins(event)
    return {"kind": record.pop("kind"), **record}
