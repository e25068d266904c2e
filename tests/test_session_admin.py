"""The admin CLI (`python -m services.session.admin`) against a private Redis."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import msgspec
import pytest
import redis

from tests.harness import ROOT, RedisServer, service_env

SIDS = {
    "alpha111aaaa": {"_permanent": True, "user": {"uid": "u-alpha", "email": "a@example.com"}},
    "alpha222bbbb": {"_permanent": True, "user": "legacy-id"},
    "beta333cccc": {"_permanent": True, "cart": [1, 2]},
}


@pytest.fixture
def populated(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    for sid, data in SIDS.items():
        client.set(f"session:{sid}", msgspec.msgpack.encode(data), ex=3600)
    client.set("session:broken00", b"\xc1")
    client.set("other:alpha999", b"not a session")
    yield client
    client.close()


def admin(redis_server: RedisServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = service_env(REDIS_URL=redis_server.url)
    return subprocess.run([sys.executable, "-m", "services.session.admin", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=30)


def test_count_counts_only_session_keys(redis_server: RedisServer, populated: redis.Redis) -> None:
    result = admin(redis_server, "count")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "4"


def test_list_masks_sids_and_shows_user_ids(redis_server: RedisServer, populated: redis.Redis) -> None:
    result = admin(redis_server, "list", "--limit", "20")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "alpha111aaaa" not in out and "alpha1…" in out
    assert "u-alpha" in out and "legacy-id" in out and "<undecodable>" in out
    assert len(out.strip().splitlines()) == 1 + 4

    shown = admin(redis_server, "--show-sids", "list", "--limit", "2")
    assert shown.returncode == 0, shown.stderr
    rows = shown.stdout.strip().splitlines()[1:]
    assert len(rows) == 2 and all(row.split()[0] in {*SIDS, "broken00"} for row in rows)


def test_show_prints_the_session_as_json(redis_server: RedisServer, populated: redis.Redis) -> None:
    result = admin(redis_server, "show", "alpha111aaaa")
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["session"] == SIDS["alpha111aaaa"]
    assert body["user_id"] == "u-alpha"
    assert body["sid"] == "alpha1…"
    assert 0 < body["ttl_s"] <= 3600

    missing = admin(redis_server, "show", "nope")
    assert missing.returncode == 1 and "no session" in missing.stderr


def test_delete_one_sid_and_by_prefix(redis_server: RedisServer, populated: redis.Redis) -> None:
    one = admin(redis_server, "delete", "beta333cccc")
    assert one.returncode == 0 and one.stdout.strip() == "deleted 1"
    assert populated.exists("session:beta333cccc") == 0

    by_prefix = admin(redis_server, "delete", "--prefix", "alpha")
    assert by_prefix.returncode == 0 and by_prefix.stdout.strip() == "deleted 2"
    assert populated.exists("session:alpha111aaaa", "session:alpha222bbbb") == 0
    assert populated.exists("session:broken00", "other:alpha999") == 2


def test_without_a_redis_url_it_explains_what_to_set(tmp_path) -> None:
    result = subprocess.run([sys.executable, "-m", "services.session.admin", "count"], env=service_env(PYTHONPATH=str(ROOT)), cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert "REDIS_URL" in result.stderr
