"""Session service configuration, read from the environment (and `.env`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from shared.config import (
    common_nats,
    env_bool,
    env_float,
    env_int,
    env_port,
    env_str,
    environ,
)
from shared.errors import ConfigError

DEFAULT_LIFETIME_S = 2678400  # 31 days: Flask's PERMANENT_SESSION_LIFETIME, and so Flask-Session's TTL
DEFAULT_CONVERSATION_LIFETIME_S = 90 * 86400
_BUCKET_RE = re.compile(r"^[a-zA-Z0-9_-]+$")


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is, as the service and the admin CLI both read it."""

    url: str
    """The URL to connect to, after the Upstash / REDIS_TLS rewrite; may hold a password."""
    source: str
    """The variable it came from: UPSTASH_REDIS_URL or REDIS_URL."""

    @property
    def tls(self) -> bool:
        return self.url.startswith("rediss://")

    @property
    def display(self) -> str:
        """host:port/db for logs, never the password."""
        parts = urlsplit(self.url)
        if parts.scheme == "unix":
            return f"unix:{parts.path}"
        db = parts.path.lstrip("/") or "0"
        return f"{parts.hostname or 'localhost'}:{parts.port or 6379}/{db}"


def effective_redis_url(url: str, *, force_tls: bool, variable: str = "REDIS_URL") -> str:
    """The URL to dial: `redis://` becomes `rediss://` for Upstash hosts or when TLS is forced.

    Upstash only accepts TLS, but its console also shows `redis://` URLs, which would
    otherwise fail with a reset connection and no useful message.
    """
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise ConfigError(f"{variable} is not a valid URL: {exc}") from None
    if parts.scheme in ("http", "https"):
        raise ConfigError(f"{variable} must be a redis:// or rediss:// URL, not the HTTP REST URL")
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"{variable} must start with redis://, rediss:// or unix://, got {parts.scheme or 'no'} scheme")
    if parts.scheme == "unix":
        if force_tls:
            raise ConfigError(f"REDIS_TLS=1 cannot apply to the unix socket in {variable}")
        return url
    if not host:
        raise ConfigError(f"{variable} has no host")
    if parts.scheme == "redis" and (force_tls or host == "upstash.io" or host.endswith(".upstash.io")):
        return urlunsplit(parts._replace(scheme="rediss"))
    return url


def redis_target(env: Mapping[str, str]) -> RedisTarget | None:
    """UPSTASH_REDIS_URL (wins) or REDIS_URL, with REDIS_TLS applied; None when neither is set."""
    force_tls = env_bool(env, "REDIS_TLS", False)
    for variable in ("UPSTASH_REDIS_URL", "REDIS_URL"):
        raw = env.get(variable, "").strip()
        if raw:
            return RedisTarget(effective_redis_url(raw, force_tls=force_tls, variable=variable), variable)
    return None


def key_prefix(env: Mapping[str, str]) -> str:
    # An explicitly empty prefix is allowed (keys are then the bare sids), so no env_str default here.
    return env.get("SESSION_KEY_PREFIX", "session:")


@dataclass(frozen=True)
class SessionConfig:
    """Everything the session service reads at start-up."""

    nats_url: str
    """NATS_URL: the bus the gateway sends session calls on."""
    subject_prefix: str
    """NATS_SUBJECT_PREFIX: the first token of every subject (default `dbgenie`)."""
    redis: RedisTarget | None = None
    """UPSTASH_REDIS_URL (wins) or REDIS_URL, with REDIS_TLS; None runs on the fallback store only."""
    lifetime_s: int = DEFAULT_LIFETIME_S
    """SESSION_LIFETIME: seconds a session lives after its last read or write (the Redis TTL)."""
    key_prefix: str = "session:"
    """SESSION_KEY_PREFIX: Redis key prefix, the same as Flask-Session's SESSION_KEY_PREFIX."""
    kv_bucket: str = "sessions"
    """SESSION_KV_BUCKET: the JetStream key-value bucket replicas share while Redis is down."""
    memory_max_entries: int = 100_000
    """SESSION_MEMORY_MAX_ENTRIES: bound of the in-memory store used when NATS has no JetStream."""
    ops_port: int = 8091
    """OPS_PORT: port of /healthz, /readyz and /metrics; 0 disables them."""
    log_level: str = "INFO"
    """LOG_LEVEL: DEBUG, INFO, WARNING or ERROR."""
    shutdown_grace_s: float = 20.0
    """SHUTDOWN_GRACE_S: how long calls in hand may finish after SIGTERM."""
    conversation_lifetime_s: int = DEFAULT_CONVERSATION_LIFETIME_S
    """CONVERSATION_LIFETIME: seconds a conversation lives after its last read or write (default 90 days)."""
    conversation_max_messages: int = 1000
    """CONVERSATION_MAX_MESSAGES: messages one conversation may hold; a turn past it is refused."""
    conversation_max_message_bytes: int = 131072
    """CONVERSATION_MAX_MESSAGE_BYTES: MessagePack bytes one stored message may take."""

    def __post_init__(self) -> None:
        if not _BUCKET_RE.match(self.kv_bucket):
            raise ConfigError(f"SESSION_KV_BUCKET may hold only letters, digits, '-' and '_', got {self.kv_bucket!r}")
        if any(c.isspace() for c in self.key_prefix):
            raise ConfigError(f"SESSION_KEY_PREFIX must not contain whitespace, got {self.key_prefix!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SessionConfig:
        env = environ() if env is None else env
        nats_url, prefix = common_nats(env)
        return cls(
            nats_url=nats_url,
            subject_prefix=prefix,
            redis=redis_target(env),
            lifetime_s=env_int(env, "SESSION_LIFETIME", DEFAULT_LIFETIME_S, minimum=1),
            key_prefix=key_prefix(env),
            kv_bucket=env_str(env, "SESSION_KV_BUCKET", "sessions"),
            memory_max_entries=env_int(env, "SESSION_MEMORY_MAX_ENTRIES", 100_000, minimum=1),
            ops_port=env_port(env, "OPS_PORT", 8091),
            log_level=env_str(env, "LOG_LEVEL", "INFO"),
            shutdown_grace_s=env_float(env, "SHUTDOWN_GRACE_S", 20.0, minimum=0),
            conversation_lifetime_s=env_int(env, "CONVERSATION_LIFETIME", DEFAULT_CONVERSATION_LIFETIME_S, minimum=1),
            conversation_max_messages=env_int(env, "CONVERSATION_MAX_MESSAGES", 1000, minimum=2),
            conversation_max_message_bytes=env_int(env, "CONVERSATION_MAX_MESSAGE_BYTES", 131072, minimum=1024),
        )
