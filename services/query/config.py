"""The query service's settings, read once from the environment; a bad value fails start-up naming the variable."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import ClassVar

import orjson

from services.query.connections.address import IPNetwork, parse_networks, parse_ports
from services.query.connections.seal import Keyring
from shared.access import DEFAULT_SOURCE, parse_policy
from shared.config import FromEnv, ServiceSettings, Setting, env_int, environ, load, read_one, setting, tcp_port
from shared.contracts import QUERY_QUEUE_WAIT_MAX_S
from shared.errors import ConfigError

PREVIEW_ROWS = 5
SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb")

# A row must fit one MySQL protocol packet (2^24 - 1 bytes) for the wire check to see it whole.
MAX_ROW_BYTES_LIMIT = 2**24 - 1

_SOURCE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


DATABASE_URL = Setting("QUERY_DATABASE_URL", "the default source's database URL; unset: the sample SQLite database", shown="the sample database")
SOURCES = Setting("QUERY_SOURCES", "more sources: `name=url` comma list or a JSON object", shown="(none)")
MAX_CHUNK_BYTES = 768 * 1024
"""A rows message stays under NATS's max_payload (1 MB)."""


def _chunk_bytes(name: str, raw: str) -> int:
    value = env_int({name: raw}, name, 0, minimum=1024)
    if value > MAX_CHUNK_BYTES:
        raise ConfigError(f"{name} must be at most {MAX_CHUNK_BYTES} (NATS messages are capped at 1 MB), got {value}")
    return value


@dataclass(frozen=True)
class SchemaConfig(FromEnv):
    """The query service's describe_schema settings."""

    cache_s: float = setting("QUERY_SCHEMA_CACHE_S", 30.0, "how long a source's description is reused; 0 reads the catalog every time", minimum=0)
    max_tables: int = setting("QUERY_SCHEMA_MAX_TABLES", 200, "tables per reply at most", minimum=1)
    max_columns: int = setting("QUERY_SCHEMA_MAX_COLUMNS", 3000, "columns per reply at most, over all its tables", minimum=1)
    timeout_s: float = setting("QUERY_SCHEMA_TIMEOUT_S", 10.0, "time limit of one description (all its catalog queries)", minimum=0.1)


@dataclass(frozen=True)
class SearchConfig(FromEnv):
    """The query service's search_schema settings; the refresh period and the catalog's time limit are describe_schema's (SchemaConfig)."""

    max_tables: int = setting("QUERY_SCHEMA_INDEX_MAX_TABLES", 5000, "tables indexed per source at most (the first in catalog order)", minimum=1)
    sample_values: int = setting("QUERY_SCHEMA_SAMPLE_VALUES", 8, "a text column with at most this many distinct values in its first rows has them kept; 0 samples none", minimum=0)
    sample_s: float = setting("QUERY_SCHEMA_SAMPLE_S", 20.0, "time one index build may spend sampling values; the tables not reached by then have none", minimum=0)
    connection_indexes: int = setting(
        "QUERY_SCHEMA_CONNECTION_INDEXES", 4, "indexes of users' own connections kept in this replica (the least recently used is dropped first), and built at once", minimum=1
    )


_PG_MEMORY = re.compile(r"^[1-9][0-9]{0,9}(kB|MB|GB|TB)?$")


def pg_memory(name: str, value: str, off: str | None = None) -> str:
    """The variable `name`'s value, checked to be a PostgreSQL memory size as the server writes it (`64MB`, `512kB`, `1GB`; bare numbers are kB)."""
    if value == off or _PG_MEMORY.match(value):
        return value
    raise ConfigError(f"{name} must be a PostgreSQL memory size such as 64MB, 512kB or 1GB{f' (or {off} for no limit)' if off else ''}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class QueryConfig(ServiceSettings):
    """Everything the query service reads from its environment (see docs/query.md)."""

    INPUTS: ClassVar[tuple[Setting, ...]] = (DATABASE_URL, SOURCES)

    # Source name -> database URL; always holds DEFAULT_SOURCE (from QUERY_DATABASE_URL, QUERY_SOURCES or the sample).
    sources: Mapping[str, str] = field(default_factory=dict)
    sample_path: Path = setting(
        "QUERY_SAMPLE_PATH", Path("var/sample.db"), "where the sample SQLite database lives; it is created there when the default source is the sample", parse=lambda _n, raw: Path(raw)
    )
    uses_sample: bool = True
    timeout_s: float = setting("QUERY_TIMEOUT_S", 30.0, "bounds one query from its start to its last row, database work and streaming together", minimum=0.001)
    max_rows: int = setting("QUERY_MAX_ROWS", 1_000_000, "rows beyond this many are not read; the stream ends with truncated=True", minimum=1)
    preview_cell_chars: int = setting("QUERY_PREVIEW_CELL_CHARS", 200, "preview cells longer than this many characters are cut (strings, and arrays/objects as JSON text)", minimum=10)
    chunk_bytes: int = setting("QUERY_CHUNK_BYTES", 192 * 1024, "target size of one rows message; every message stays under NATS's max_payload", parse=_chunk_bytes)
    ack_timeout_s: float = setting("QUERY_ACK_TIMEOUT_S", 15.0, "a stream whose consumer acknowledges nothing for this long is dropped", minimum=0.1)
    pool_size: int = setting("QUERY_POOL_SIZE", 5, "connections per PostgreSQL/MySQL source, and concurrent queries per SQLite source", minimum=1)
    ops_port: int = setting("OPS_PORT", 8092, "port of /healthz, /readyz and /metrics; 0 disables them", parse=tcp_port)
    # A value / a row larger than this many bytes, as the database sends it, ends the query
    # with an error before it is read (services/query/wire.py, docs/query-values.md).
    max_cell_bytes: int = setting("QUERY_MAX_CELL_BYTES", 512 * 1024, "a value larger than this many bytes ends the query with an error before it is read", minimum=1024)
    max_row_bytes: int = setting("QUERY_MAX_ROW_BYTES", 1024 * 1024, "a row larger than this many bytes ends the query with an error before it is read", minimum=1024)
    max_concurrent: int = setting("QUERY_MAX_CONCURRENT", 8, "queries running at once in this replica; one more is declined (another replica takes it) or waits in the queue", minimum=1)
    queue_max: int = setting("QUERY_QUEUE_MAX", 64, "queries that may wait for a slot in this replica, fair between users; one more is refused with code busy (HTTP 503)", minimum=0)
    queue_wait_s: float = setting("QUERY_QUEUE_WAIT_S", 3.0, f"how long a query may wait for a slot before code busy (HTTP 503); at most {QUERY_QUEUE_WAIT_MAX_S:g}", minimum=0)
    allow_privileged: bool = setting("QUERY_ALLOW_PRIVILEGED", False, "serve sources whose database account can do more than read (docs/query-account.md); a warning is logged on every start")
    schema: SchemaConfig = field(default_factory=SchemaConfig)  # read from the same environment by from_env
    search: SearchConfig = field(default_factory=SearchConfig)  # likewise
    # Server-side bounds per statement (docs/query-guard.md#server-side-resources).
    pg_work_mem: str = setting("QUERY_PG_WORK_MEM", "4MB", "PostgreSQL work_mem set for every statement (memory units as the server writes them)", parse=pg_memory)
    pg_temp_file_limit: str = setting(
        "QUERY_PG_TEMP_FILE_LIMIT", "1GB", "PostgreSQL temp_file_limit set for every statement when the role may set it; -1 sets none", parse=lambda n, raw: pg_memory(n, raw, off="-1")
    )
    mysql_max_mem_bytes: int = setting("QUERY_MYSQL_MAX_MEM_BYTES", 256 * 1024 * 1024, "MariaDB max_session_mem_used set for every statement, in bytes", minimum=8192)
    allowed_functions: Mapping[str, frozenset[tuple[str | None, str]]] = setting(
        "QUERY_ALLOWED_FUNCTIONS",
        MappingProxyType({}),
        "source name -> the operator's own read-only functions, added to the guard's allow rule",
        parse=lambda _n, raw: MappingProxyType(parse_allowed_functions(raw)),
    )
    # Users' own connections (docs/connections.md).
    connections_keys: Keyring | None = setting(
        "CONNECTIONS_KEYS",
        None,
        "`id:base64-32-bytes` entries, comma-separated; the first seals users' database passwords, every one opens; unset: the feature is off",
        parse=lambda _n, raw: Keyring.parse(raw),
        shown="(none: users' own connections are off)",
        secret=True,
    )
    connections_allowed_networks: tuple[IPNetwork, ...] = setting(
        "CONNECTIONS_ALLOWED_NETWORKS", (), "CIDRs users' connections may reach although they are not public", parse=lambda n, raw: parse_networks(raw, n), shown="(none)"
    )
    connections_allowed_ports: frozenset[int] | None = setting(
        "CONNECTIONS_ALLOWED_PORTS", None, "ports users' connections may use (None: 1-65535)", parse=lambda n, raw: parse_ports(raw, n), shown="(every port 1-65535)"
    )
    connections_connect_timeout_s: float = setting(
        "CONNECTIONS_CONNECT_TIMEOUT_S", 3.0, "how long a user's database gets to accept a connection; every unreachable answer waits this long", minimum=0.05
    )
    connections_max_per_user: int = setting("CONNECTIONS_MAX_PER_USER", 10, "connections one user may keep", minimum=1)
    max_pools: int = setting("QUERY_MAX_POOLS", 100, "users' connection pools open in this replica; the least recently used idle one is closed first", minimum=1)
    pool_idle_s: float = setting("QUERY_POOL_IDLE_S", 300.0, "a user's pool unused this long is closed", minimum=0.05)
    max_concurrent_per_user: int = setting("QUERY_MAX_CONCURRENT_PER_USER", 4, "queries and schema reads one user runs at once on their own connections, in this replica", minimum=1)
    roles: Mapping[str, tuple[str, ...]] = setting(
        "ACCESS_POLICY",
        MappingProxyType({}),
        "the gateway's access policy (docs/access.md): each database role it names for a source is checked when that source opens",
        parse=lambda name, raw: _policy_roles(name, raw),
        shown="",
    )
    allow_activity_views: bool = setting("QUERY_ALLOW_ACTIVITY_VIEWS", False, "let queries read views of other sessions' SQL (pg_stat_activity, the processlists)")

    def __post_init__(self) -> None:
        if self.queue_wait_s > QUERY_QUEUE_WAIT_MAX_S:
            raise ConfigError(f"QUERY_QUEUE_WAIT_S must be at most {QUERY_QUEUE_WAIT_MAX_S:g} (the gateway waits no longer), got {self.queue_wait_s:g}")
        if self.max_cell_bytes > self.max_row_bytes:
            raise ConfigError(f"QUERY_MAX_CELL_BYTES ({self.max_cell_bytes}) must not be more than QUERY_MAX_ROW_BYTES ({self.max_row_bytes})")
        if self.max_row_bytes > MAX_ROW_BYTES_LIMIT:
            raise ConfigError(f"QUERY_MAX_ROW_BYTES must be at most {MAX_ROW_BYTES_LIMIT} (one MySQL packet), got {self.max_row_bytes}")
        if DEFAULT_SOURCE not in self.sources:
            raise ConfigError(f"no {DEFAULT_SOURCE!r} source: set QUERY_DATABASE_URL")
        for name, url in self.sources.items():
            check_url(url, "QUERY_DATABASE_URL" if name == DEFAULT_SOURCE else f"QUERY_SOURCES ({name})")
        for name in self.allowed_functions:
            if name not in self.sources:
                raise ConfigError(f"QUERY_ALLOWED_FUNCTIONS names source {name!r}, which is not configured; known: {', '.join(sorted(self.sources))}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> QueryConfig:
        env = environ() if env is None else env
        sample_path = read_one(cls, "sample_path", env)
        database_url = env.get(DATABASE_URL.env, "").strip()
        sources = parse_sources(env.get(SOURCES.env, ""))
        if database_url and DEFAULT_SOURCE in sources:
            raise ConfigError(f"QUERY_SOURCES names a {DEFAULT_SOURCE!r} source and QUERY_DATABASE_URL is set too; keep one")
        uses_sample = not database_url and DEFAULT_SOURCE not in sources
        if database_url:
            sources[DEFAULT_SOURCE] = database_url
        elif uses_sample:
            sources[DEFAULT_SOURCE] = sqlite_url(sample_path)
        return load(cls, env, sources=MappingProxyType(sources), sample_path=sample_path, uses_sample=uses_sample, schema=SchemaConfig.from_env(env), search=SearchConfig.from_env(env))


def _policy_roles(name: str, raw: str) -> Mapping[str, tuple[str, ...]]:
    """ACCESS_POLICY's database roles per source."""
    policy = parse_policy(raw, name)
    return MappingProxyType({source: roles for source in policy.rules if (roles := policy.roles(source))})


def parse_sources(raw: str) -> dict[str, str]:
    """QUERY_SOURCES: `name=url,name2=url2`, or a JSON object `{"name": "url"}`."""
    raw = raw.strip()
    if not raw:
        return {}
    if raw.startswith("{"):
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"QUERY_SOURCES is not valid JSON: {exc}") from None
        if not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values()):
            raise ConfigError("QUERY_SOURCES as JSON must be an object of name -> URL strings")
        pairs = list(parsed.items())
    else:
        pairs = []
        for item in raw.split(","):
            item = item.strip()
            if not item:
                continue
            name, sep, url = item.partition("=")
            if not sep:
                raise ConfigError(f"QUERY_SOURCES entries must look like name=url, got {item!r}")
            pairs.append((name.strip(), url.strip()))
    sources: dict[str, str] = {}
    for name, url in pairs:
        if not _SOURCE_NAME.match(name):
            raise ConfigError(f"QUERY_SOURCES: source names are 1-64 letters, digits, '_' or '-', got {name!r}")
        if name in sources:
            raise ConfigError(f"QUERY_SOURCES names {name!r} twice")
        if not url:
            raise ConfigError(f"QUERY_SOURCES: source {name!r} has no URL")
        sources[name] = url
    return sources


_FUNCTION_PART = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")


def parse_allowed_functions(raw: str) -> dict[str, frozenset[tuple[str | None, str]]]:
    """QUERY_ALLOWED_FUNCTIONS: `source:func,schema.func;other:func` (names case-insensitive, stored lower-case)."""
    allowed: dict[str, frozenset[tuple[str | None, str]]] = {}
    for group in raw.split(";"):
        group = group.strip()
        if not group:
            continue
        source, sep, names = group.partition(":")
        source = source.strip()
        if not sep or not _SOURCE_NAME.match(source):
            raise ConfigError(f"QUERY_ALLOWED_FUNCTIONS entries must look like source:func1,schema.func2, got {group!r}")
        if source in allowed:
            raise ConfigError(f"QUERY_ALLOWED_FUNCTIONS names source {source!r} twice")
        functions: set[tuple[str | None, str]] = set()
        for item in names.split(","):
            parts = [part.strip() for part in item.strip().split(".")]
            if not 1 <= len(parts) <= 2 or not all(_FUNCTION_PART.match(part) for part in parts):
                raise ConfigError(f"QUERY_ALLOWED_FUNCTIONS ({source}): {item.strip()!r} is not a function name (name or schema.name, letters, digits, '_', '$')")
            lowered = [part.lower() for part in parts]
            functions.add((lowered[0], lowered[1]) if len(lowered) == 2 else (None, lowered[0]))
        allowed[source] = frozenset(functions)
    return allowed


def url_scheme(url: str) -> str:
    scheme, sep, _ = url.partition("://")
    return scheme.lower() if sep else ""


def check_url(url: str, variable: str) -> None:
    scheme = url_scheme(url)
    if scheme not in SCHEMES:
        raise ConfigError(f"{variable} must be a sqlite:///, postgresql:// or mysql:// URL, got scheme {scheme or 'none'!r}")
    if scheme == "sqlite" and not sqlite_path(url):
        raise ConfigError(f"{variable}: a SQLite URL needs a file path (sqlite:///relative.db or sqlite:////absolute.db)")


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def sqlite_path(url: str) -> str:
    """The file path of `sqlite:///relative` or `sqlite:////absolute` (query string dropped)."""
    rest = url.split("://", 1)[1]
    if not rest.startswith("/"):
        return ""
    return rest[1:].split("?", 1)[0]
