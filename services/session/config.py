"""Session service configuration, read from the environment (and `.env`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar
from urllib.parse import urlsplit, urlunsplit

from shared.config import ServiceSettings, Setting, environ, load, read_one, setting, tcp_port
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
    cluster: bool = False
    """Redis Cluster (REDIS_CLUSTER=1 or a `redis+cluster://` URL): redis-py's cluster client."""

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
    if parts.scheme in ("redis+cluster", "rediss+cluster"):
        parts = parts._replace(scheme=parts.scheme.removesuffix("+cluster"))
        url = urlunsplit(parts)
    if parts.scheme in ("http", "https"):
        raise ConfigError(f"{variable} must be a redis:// or rediss:// URL, not the HTTP REST URL")
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"{variable} must start with redis://, rediss://, redis+cluster:// or unix://, got {parts.scheme or 'no'} scheme")
    if parts.scheme == "unix":
        if force_tls:
            raise ConfigError(f"REDIS_TLS=1 cannot apply to the unix socket in {variable}")
        return url
    if not host:
        raise ConfigError(f"{variable} has no host")
    if parts.scheme == "redis" and (force_tls or host == "upstash.io" or host.endswith(".upstash.io")):
        return urlunsplit(parts._replace(scheme="rediss"))
    return url


REDIS_INPUTS = (
    Setting("UPSTASH_REDIS_URL", "Redis URL; wins over `REDIS_URL`"),
    Setting("REDIS_URL", "Redis URL; neither set = fallback store only (warning)"),
)
REDIS_TLS = Setting("REDIS_TLS", "`1` dials `rediss://` whatever the host", shown="0")
REDIS_CLUSTER = Setting("REDIS_CLUSTER", "`1`: the URL names one node of a Redis Cluster (as does a `redis+cluster://` URL)", shown="0")


def redis_target(env: Mapping[str, str]) -> RedisTarget | None:
    """UPSTASH_REDIS_URL (wins) or REDIS_URL, with REDIS_TLS applied; None when neither is set."""
    force_tls = REDIS_TLS.read(env, bool, False)
    cluster = REDIS_CLUSTER.read(env, bool, False)
    for variable in REDIS_INPUTS:
        raw = env.get(variable.env, "").strip()
        if raw:
            cluster = cluster or urlsplit(raw).scheme.endswith("+cluster")
            url = effective_redis_url(raw, force_tls=force_tls, variable=variable.env)
            if cluster and url.startswith("unix://"):
                raise ConfigError(f"REDIS_CLUSTER=1 needs a redis:// or rediss:// URL in {variable.env}, not a unix socket")
            return RedisTarget(url, variable.env, cluster)
    return None


def key_prefix(env: Mapping[str, str]) -> str:
    """SESSION_KEY_PREFIX as the service reads it (for the admin CLI)."""
    return read_one(SessionConfig, "key_prefix", env)


@dataclass(frozen=True, kw_only=True)
class SessionConfig(ServiceSettings):
    """Everything the session service reads at start-up."""

    INPUTS: ClassVar[tuple[Setting, ...]] = (*REDIS_INPUTS, REDIS_TLS, REDIS_CLUSTER)

    redis: RedisTarget | None = None
    """From UPSTASH_REDIS_URL (wins) or REDIS_URL, with REDIS_TLS; None runs on the fallback store only."""
    lifetime_s: int = setting("SESSION_LIFETIME", DEFAULT_LIFETIME_S, "seconds a session lives after its last read or write (the Redis TTL)", minimum=1)
    # An explicitly empty prefix is allowed (keys are then the bare sids).
    key_prefix: str = setting("SESSION_KEY_PREFIX", "session:", "Redis key prefix, the same as Flask-Session's SESSION_KEY_PREFIX", keep_empty=True)
    kv_bucket: str = setting("SESSION_KV_BUCKET", "sessions", "the JetStream key-value bucket replicas share while Redis is down")
    memory_max_entries: int = setting("SESSION_MEMORY_MAX_ENTRIES", 100_000, "bound of the in-memory store used when NATS has no JetStream", minimum=1)
    ops_port: int = setting("OPS_PORT", 8091, "port of /healthz, /readyz and /metrics; 0 disables them", parse=tcp_port)
    conversation_lifetime_s: int = setting("CONVERSATION_LIFETIME", DEFAULT_CONVERSATION_LIFETIME_S, "seconds a conversation lives after its last read or write (default 90 days)", minimum=1)
    conversation_max_messages: int = setting("CONVERSATION_MAX_MESSAGES", 1000, "messages one conversation may hold; a turn past it is refused", minimum=2)
    conversation_max_message_bytes: int = setting("CONVERSATION_MAX_MESSAGE_BYTES", 131072, "MessagePack bytes one stored message may take", minimum=1024)

    def __post_init__(self) -> None:
        if not _BUCKET_RE.match(self.kv_bucket):
            raise ConfigError(f"SESSION_KV_BUCKET may hold only letters, digits, '-' and '_', got {self.kv_bucket!r}")
        if any(c.isspace() for c in self.key_prefix):
            raise ConfigError(f"SESSION_KEY_PREFIX must not contain whitespace, got {self.key_prefix!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SessionConfig:
        env = environ() if env is None else env
        return load(cls, env, redis=redis_target(env))
