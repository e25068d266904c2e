"""SessionConfig.from_env: defaults, the Upstash/TLS rewrite, and errors that name the variable."""

from __future__ import annotations

import pytest

from services.session.config import SessionConfig, effective_redis_url, redis_target
from shared.errors import ConfigError


def test_defaults_match_flask_session() -> None:
    config = SessionConfig.from_env({})
    assert config.redis is None
    assert config.lifetime_s == 2678400
    assert config.key_prefix == "session:"
    assert config.kv_bucket == "sessions"
    assert config.ops_port == 8091
    assert config.shutdown_grace_s == 20.0


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://default:pw@eu1-lucky-cat-12345.upstash.io:6379", "rediss://default:pw@eu1-lucky-cat-12345.upstash.io:6379"),
        ("redis://default:pw@EU1-LUCKY.UPSTASH.IO:6379/0", "rediss://default:pw@EU1-LUCKY.UPSTASH.IO:6379/0"),
        ("rediss://default:pw@x.upstash.io:6379", "rediss://default:pw@x.upstash.io:6379"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://notupstash.io:6379", "redis://notupstash.io:6379"),
    ],
)
def test_upstash_hosts_are_dialled_over_tls(url: str, expected: str) -> None:
    assert effective_redis_url(url, force_tls=False) == expected


def test_redis_tls_forces_tls_for_any_host() -> None:
    assert effective_redis_url("redis://cache.internal:6380/2", force_tls=True) == "rediss://cache.internal:6380/2"
    target = redis_target({"REDIS_URL": "redis://cache.internal:6380/2", "REDIS_TLS": "1"})
    assert target is not None and target.tls and target.display == "cache.internal:6380/2"


def test_upstash_url_wins_over_redis_url() -> None:
    target = redis_target({"UPSTASH_REDIS_URL": "redis://default:secret@a.upstash.io:6379", "REDIS_URL": "redis://127.0.0.1:6379/0"})
    assert target is not None
    assert target.source == "UPSTASH_REDIS_URL"
    assert target.url.startswith("rediss://")
    assert "secret" not in target.display


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"REDIS_URL": "https://eu1.upstash.io"}, "REDIS_URL"),
        ({"UPSTASH_REDIS_URL": "https://eu1.upstash.io"}, "UPSTASH_REDIS_URL"),
        ({"REDIS_URL": "postgres://x"}, "REDIS_URL"),
        ({"REDIS_URL": "redis://host:notaport"}, "REDIS_URL"),
        ({"REDIS_URL": "redis://x", "REDIS_TLS": "maybe"}, "REDIS_TLS"),
        ({"SESSION_LIFETIME": "a month"}, "SESSION_LIFETIME"),
        ({"SESSION_LIFETIME": "0"}, "SESSION_LIFETIME"),
        ({"SESSION_KV_BUCKET": "bad.name"}, "SESSION_KV_BUCKET"),
        ({"SESSION_MEMORY_MAX_ENTRIES": "0"}, "SESSION_MEMORY_MAX_ENTRIES"),
        ({"OPS_PORT": "70000"}, "OPS_PORT"),
        ({"SHUTDOWN_GRACE_S": "soon"}, "SHUTDOWN_GRACE_S"),
    ],
)
def test_malformed_settings_fail_naming_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        SessionConfig.from_env(env)
