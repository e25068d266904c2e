"""Settings: each declared once, on its config dataclass field, with its variable, default, bound and doc.

    port: int = setting("GATEWAY_PORT", 8080, "the HTTP port", parse=tcp_port)

`load(cls, env)` reads every declared field from the environment (and a `.env` file); a bad
value fails at start with a ConfigError naming the variable. `declared(cls)` lists the
declarations, which tests/test_docs.py checks docs/configuration.md against (name, section,
default). `ServiceSettings` holds what every service reads.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields
from functools import cache
from typing import Any, ClassVar, Self

from dotenv import load_dotenv

from shared.errors import ConfigError


@cache
def load_env_file() -> None:
    """Load `.env` from the working directory once; real environment variables win."""
    load_dotenv(os.path.join(os.getcwd(), ".env"), override=False)


def environ() -> Mapping[str, str]:
    load_env_file()
    return os.environ


def env_str(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip()
    return value or default


def env_int(env: Mapping[str, str], name: str, default: int, *, minimum: int | None = None) -> int:
    return _env_number(env, name, default, int, "an integer", minimum)


def env_float(env: Mapping[str, str], name: str, default: float, *, minimum: float | None = None) -> float:
    return _env_number(env, name, default, float, "a number", minimum)


def _env_number[N: (int, float)](env: Mapping[str, str], name: str, default: N, kind: type[N], noun: str, minimum: float | None) -> N:
    """`name` read as `kind` (the default when unset or blank), at least `minimum`; else a ConfigError naming the variable."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name} must be {noun}, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


DEFAULT_SUBJECT_PREFIX = "dbgenie"
"""NATS_SUBJECT_PREFIX when unset: the first token of every subject."""

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigError(f"{name} must be one of 1/0/true/false/yes/no/on/off, got {raw!r}")


def env_port(env: Mapping[str, str], name: str, default: int) -> int:
    """A TCP port; 0 means "disabled" where the caller allows it."""
    value = env_int(env, name, default, minimum=0)
    if value > 65535:
        raise ConfigError(f"{name} must be a TCP port (0-65535), got {value}")
    return value


# --- declared settings ------------------------------------------------------------------------

_SETTING = "setting"


@dataclass(frozen=True)
class Setting:
    """One environment variable: its name, doc and bound, and how its text becomes a value.

    Without `parse`, the field's type decides (str, int, float, bool; `minimum` bounds numbers).
    `parse(name, text)` reads anything else; it gets only non-empty text. `shown` is the
    default as docs/configuration.md shows it when it is no plain value (`from discovery`).
    """

    env: str
    doc: str
    minimum: float | None = None
    parse: Callable[[str, str], Any] | None = None
    shown: str | None = None
    default_from: Callable[[Mapping[str, Any]], Any] | None = None
    """The default from the values read before this one (declaration order), instead of a constant."""
    keep_empty: bool = False
    """An explicitly empty value is a value (not the default), taken as it is, unstripped."""

    def read(self, env: Mapping[str, str], kind: Any, default: Any) -> Any:
        if self.keep_empty:
            return env[self.env] if self.env in env else default
        if self.parse is not None:
            raw = env.get(self.env, "").strip()
            return self.parse(self.env, raw) if raw else default
        if kind is bool:
            return env_bool(env, self.env, default)
        if kind is int:
            return env_int(env, self.env, default, minimum=None if self.minimum is None else int(self.minimum))
        if kind is float:
            return env_float(env, self.env, default, minimum=self.minimum)
        return env_str(env, self.env, default)


def setting(
    env: str,
    default: Any,
    doc: str,
    *,
    minimum: float | None = None,
    parse: Callable[[str, str], Any] | None = None,
    shown: str | None = None,
    default_from: Callable[[Mapping[str, Any]], Any] | None = None,
    keep_empty: bool = False,
    secret: bool = False,
) -> Any:
    """A dataclass field read from `env` by `load`; `secret` keeps it out of the repr."""
    return field(default=default, repr=not secret, metadata={_SETTING: Setting(env, doc, minimum, parse, shown, default_from, keep_empty)})


@dataclass(frozen=True)
class Declared:
    """A declared setting: the variable, its default as the docs show it and as the code uses it, and its doc."""

    env: str
    default: str
    doc: str
    value: Any = None


def shown_default(value: Any) -> str:
    """A default as docs/configuration.md writes it: `1`/`0` for booleans, `20` for 20.0, empty for none."""
    if value is None or (not isinstance(value, (bool, int, float)) and not value):  # "", (), an empty mapping
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def declared(cls: type) -> list[Declared]:
    """Every setting `cls` declares: its fields' (in order), then the variables it reads into derived fields (`INPUTS`)."""
    out = []
    for f in fields(cls):
        if (s := f.metadata.get(_SETTING)) is not None:
            out.append(Declared(s.env, s.shown if s.shown is not None else shown_default(f.default), s.doc, f.default))
    out += [Declared(s.env, s.shown or "", s.doc) for s in getattr(cls, "INPUTS", ())]
    return out


def load[C](cls: type[C], env: Mapping[str, str], **given: Any) -> C:
    """`cls` with every declared field read from `env`, except those `given` (derived from several variables)."""
    hints = typing.get_type_hints(cls)
    values = dict(given)
    for f in fields(cls):  # type: ignore[arg-type]
        s = f.metadata.get(_SETTING)
        if s is None or f.name in values:
            continue
        values[f.name] = s.read(env, hints[f.name], s.default_from(values) if s.default_from else f.default)
    return cls(**values)


def read_one(cls: type, name: str, env: Mapping[str, str]) -> Any:
    """One declared field of `cls` read from `env` (a tool that needs a single setting)."""
    f: Field[Any] = next(f for f in fields(cls) if f.name == name)
    return f.metadata[_SETTING].read(env, typing.get_type_hints(cls)[name], f.default)


def tcp_port(name: str, raw: str) -> int:
    """A TCP port; 0 means "disabled" where the caller allows it."""
    return env_port({name: raw}, name, 0)


def subject_token_path(name: str, raw: str) -> str:
    if any(c in raw for c in " *>") or raw.startswith(".") or raw.endswith("."):
        raise ConfigError(f"{name} must be a plain subject token path, got {raw!r}")
    return raw


class FromEnv:
    """A settings dataclass's `from_env(env)`: `load` from `env`, or from the process environment (and `.env`)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        return load(cls, environ() if env is None else env)


@dataclass(frozen=True, kw_only=True)
class ServiceSettings(FromEnv):
    """What every service reads: the bus, the subject prefix, the log level and the shutdown grace."""

    INPUTS: ClassVar[tuple[Setting, ...]] = ()

    nats_url: str = setting("NATS_URL", "nats://127.0.0.1:4222", "NATS server, or a comma-separated list of a cluster's servers")
    nats_creds: str = setting("NATS_CREDS", "", "credentials file (JWT and nkey seed) this service connects to NATS with")
    nats_user: str = setting("NATS_USER", "", "NATS user name (with `NATS_PASSWORD`)")
    nats_password: str = setting("NATS_PASSWORD", "", "NATS password of `NATS_USER`", secret=True)
    nats_nkey_seed: str = setting("NATS_NKEY_SEED", "", "NATS nkey seed: a seed file, or the seed itself (`SU...`)", secret=True)
    nats_js_replicas: int = setting("NATS_JS_REPLICAS", 1, "replicas of the JetStream buckets and streams a service creates (3 on a NATS cluster)", minimum=1)
    subject_prefix: str = setting("NATS_SUBJECT_PREFIX", DEFAULT_SUBJECT_PREFIX, "first token of every subject", parse=subject_token_path)
    log_level: str = setting("LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR")
    log_flush_ms: int = setting("LOG_FLUSH_MS", 50, "how long log lines below ERROR may be held to go out in one write; 0: written at each turn of the event loop", minimum=0)
    shutdown_grace_s: float = setting("SHUTDOWN_GRACE_S", 20.0, "after SIGTERM, how long in-flight work may finish", minimum=0)

    @property
    def nats_credentials(self) -> NatsCredentials:
        """The one kind of NATS credentials set (none, a creds file, a user and password, or an nkey seed)."""
        return NatsCredentials.read(self)


@dataclass(frozen=True)
class NatsCredentials:
    """How a service proves itself to NATS: nothing (a server without authorization), or exactly one kind of credential."""

    creds_file: str = ""
    user: str = ""
    password: str = field(default="", repr=False)
    nkey_seed: str = field(default="", repr=False)

    @property
    def kind(self) -> str:
        """What identifies the service, for logs: none, NATS_CREDS, NATS_USER or NATS_NKEY_SEED."""
        if self.creds_file:
            return "NATS_CREDS"
        if self.user:
            return "NATS_USER"
        return "NATS_NKEY_SEED" if self.nkey_seed else "none"

    @classmethod
    def read(cls, config: ServiceSettings) -> NatsCredentials:
        kinds = [name for name, value in (("NATS_CREDS", config.nats_creds), ("NATS_USER", config.nats_user), ("NATS_NKEY_SEED", config.nats_nkey_seed)) if value]
        if len(kinds) > 1:
            raise ConfigError(f"set one kind of NATS credentials, not {' and '.join(kinds)}")
        if bool(config.nats_user) != bool(config.nats_password):
            raise ConfigError("NATS_USER and NATS_PASSWORD go together: set both or neither")
        if config.nats_creds and not os.access(config.nats_creds, os.R_OK):
            raise ConfigError(f"NATS_CREDS names no readable file: {config.nats_creds}")
        seed = config.nats_nkey_seed
        if seed and not seed.startswith("SU"):
            if not os.access(seed, os.R_OK):
                raise ConfigError("NATS_NKEY_SEED is neither a user seed (SU...) nor a readable seed file")
        return cls(config.nats_creds, config.nats_user, config.nats_password, seed)

    def options(self) -> dict[str, Any]:
        """nats-py's connect() keyword arguments for these credentials."""
        if self.creds_file:
            return {"user_credentials": self.creds_file}
        if self.user:
            return {"user": self.user, "password": self.password}
        if self.nkey_seed.startswith("SU"):
            return {"nkeys_seed_str": self.nkey_seed}
        if self.nkey_seed:
            return {"nkeys_seed": self.nkey_seed}
        return {}
