"""Reading configuration from the environment (and a `.env` file) with errors that name the variable."""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cache

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
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def env_float(env: Mapping[str, str], name: str, default: float, *, minimum: float | None = None) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


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


def common_nats(env: Mapping[str, str]) -> tuple[str, str]:
    """NATS_URL and NATS_SUBJECT_PREFIX, which every service reads the same way."""
    url = env_str(env, "NATS_URL", "nats://127.0.0.1:4222")
    prefix = env_str(env, "NATS_SUBJECT_PREFIX", "dbgenie")
    if any(c in prefix for c in " *>") or prefix.startswith(".") or prefix.endswith("."):
        raise ConfigError(f"NATS_SUBJECT_PREFIX must be a plain subject token path, got {prefix!r}")
    return url, prefix
