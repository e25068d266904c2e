"""services/session/patch.lua on its own, in a real Redis, with edge-case MessagePack byte strings.

The script splices the stored bytes: untouched fields must come out byte for byte, the map
header must be the smallest that fits the new count, and anything that is not one complete
MessagePack map must be refused (-1) without touching the key.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import redis

from services.session.redis_store import PATCH_LUA
from shared.codec import encode
from tests.conftest import Infra

LIFETIME = 600
NOT_A_MAP = -1


@pytest.fixture(scope="module")
def rdb(infra: Infra) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(infra.redis_url)
    yield client
    client.close()


class Patch:
    """Runs the script as RedisStore.patch does: lifetime, field count, (name, key+value bytes) pairs, then names to remove."""

    def __init__(self, rdb: redis.Redis) -> None:
        self.rdb = rdb
        self.script = rdb.register_script(PATCH_LUA)
        self.key = f"patchlua:{uuid.uuid4().hex}"

    def __call__(self, changes: dict[str, Any] | None = None, unset: list[str] | None = None) -> Any:
        pairs = [(name, encode(name) + encode(value)) for name, value in (changes or {}).items()]
        args: list[Any] = [LIFETIME, len(pairs)]
        for name, pair in pairs:
            args += [name, pair]
        args += unset or []
        return self.script(keys=[self.key], args=args)

    def store(self, raw: bytes) -> None:
        self.rdb.set(self.key, raw)


@pytest.fixture
def patch(rdb: redis.Redis) -> Iterator[Patch]:
    runner = Patch(rdb)
    yield runner
    rdb.delete(runner.key)


def pair(name: Any, value: Any) -> bytes:
    return encode(name) + encode(value)


def map_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x80 + n])
    if n < 65536:
        return b"\xde" + struct.pack(">H", n)
    return b"\xdf" + struct.pack(">I", n)


def str32(text: str) -> bytes:
    """A str in the 32-bit length form, which msgpack-python never writes for short strings (but may be read)."""
    data = text.encode()
    return b"\xdb" + struct.pack(">I", len(data)) + data


def test_a_missing_key_is_no_session_and_stays_missing(patch: Patch, rdb: redis.Redis) -> None:
    assert patch({"a": 1}) is None
    assert rdb.exists(patch.key) == 0


def test_an_empty_map_gets_the_new_field_and_the_lifetime(patch: Patch, rdb: redis.Redis) -> None:
    patch.store(b"\x80")
    assert patch({"a": 1}) == b"\x81" + pair("a", 1)
    assert rdb.get(patch.key) == b"\x81" + pair("a", 1)
    assert LIFETIME - 5 < rdb.ttl(patch.key) <= LIFETIME


def test_removing_the_only_field_leaves_an_empty_map(patch: Patch) -> None:
    patch.store(b"\x81" + pair("a", 1))
    assert patch(unset=["a"]) == b"\x80"


def test_a_set_field_moves_to_the_end_with_its_new_value(patch: Patch) -> None:
    patch.store(b"\x82" + pair("a", 1) + pair("b", 2))
    assert patch({"a": 3}) == b"\x82" + pair("b", 2) + pair("a", 3)


def test_untouched_values_of_every_type_keep_their_exact_bytes(patch: Patch) -> None:
    kept = b"".join(
        [
            pair("nested", {"x": {"y": [1, b"\x00\xff", None, True, False]}, "z": {}}),
            pair("bin8", b"\x00" * 3),
            pair("bin16", b"\x01" * 300),
            pair("bin32", b"\x02" * 70_000),
            pair("fixext1", msgpack.ExtType(1, b"a")),
            pair("fixext2", msgpack.ExtType(2, b"ab")),
            pair("fixext4", msgpack.ExtType(3, b"abcd")),
            pair("fixext8", msgpack.ExtType(4, b"abcdefgh")),
            pair("fixext16", msgpack.ExtType(5, b"a" * 16)),
            pair("ext8", msgpack.ExtType(6, b"e" * 3)),
            pair("ext16", msgpack.ExtType(7, b"e" * 300)),
            pair("ext32", msgpack.ExtType(8, b"e" * 70_000)),
            encode("float32") + b"\xca" + struct.pack(">f", 1.5),
            pair("float64", 0.1),
            pair("uint64", 2**64 - 1),
            pair("int64", -(2**63)),
            pair("negfix", -5),
            pair("str8", "s" * 40),
            pair("str16", "s" * 300),
            pair("str32", "s" * 70_000),
            encode("str32short") + str32("short"),
            pair("array16", list(range(20))),
            pair("map16", {str(i): i for i in range(20)}),
        ]
    )
    count = 24  # the kept fields and one more, set or removed
    patch.store(map_header(count) + kept + pair("gone", 1))
    assert patch({"new": "v"}, ["gone"]) == map_header(count) + kept + pair("new", "v")


@pytest.mark.parametrize(
    ("form", "key"),
    [
        ("str8", "k" * 40),
        ("str16", "k" * 300),
        ("str32", "k" * 70_000),
    ],
)
def test_fields_named_in_longer_string_forms_are_found_by_name(patch: Patch, form: str, key: str) -> None:
    patch.store(b"\x82" + pair(key, 1) + pair("other", 2))
    assert patch({key: 5}) == b"\x82" + pair("other", 2) + pair(key, 5), form
    assert patch(unset=[key]) == b"\x81" + pair("other", 2), form


def test_a_field_named_in_the_str32_form_is_found_even_when_short(patch: Patch) -> None:
    patch.store(b"\x82" + str32("a") + encode(1) + pair("b", 2))
    assert patch(unset=["a"]) == b"\x81" + pair("b", 2)


def test_non_string_keys_are_kept_and_never_taken_for_a_field_name(patch: Patch) -> None:
    patch.store(b"\x82" + encode(1) + encode("one") + pair("1", "text"))
    assert patch(unset=["1"]) == b"\x81" + encode(1) + encode("one")


@pytest.mark.parametrize(
    ("before", "changes", "unset", "after"),
    [
        (15, {"new": 1}, [], 16),  # fixmap -> map16
        (16, {}, ["f0"], 15),  # map16 -> fixmap
        (65_535, {"new": 1}, [], 65_536),  # map16 -> map32
        (65_536, {}, ["f0"], 65_535),  # map32 -> map16
    ],
)
def test_the_map_header_is_the_smallest_that_fits_the_new_count(patch: Patch, before: int, changes: dict[str, Any], unset: list[str], after: int) -> None:
    fields = b"".join(pair(f"f{i}", i) for i in range(before))
    patch.store(map_header(before) + fields)
    result = patch(changes, unset)
    assert result[: len(map_header(after))] == map_header(after)
    expected = {f"f{i}": i for i in range(before)}
    for name in unset:
        expected.pop(name)
    expected.update(changes)
    assert msgpack.unpackb(result) == expected


@pytest.mark.parametrize("header", [b"\xde\x00\x02", b"\xdf\x00\x00\x00\x02"])
def test_a_map_stored_with_a_wider_header_than_needed_comes_back_with_the_smallest(patch: Patch, header: bytes) -> None:
    patch.store(header + pair("a", 1) + pair("b", 2))
    assert patch({"c": 3}) == b"\x83" + pair("a", 1) + pair("b", 2) + pair("c", 3)


@pytest.mark.parametrize(
    ("case", "raw"),
    [
        ("empty bytes", b""),
        ("an array", encode([1, 2])),
        ("a string", encode("map")),
        ("an integer", encode(7)),
        ("nil", b"\xc0"),
        ("a map missing its last value", b"\x82" + pair("a", 1) + encode("b")),
        ("a map with bytes after it", b"\x81" + pair("a", 1) + b"\x00"),
        ("a value cut short", b"\x81" + encode("a") + b"\xcd\x01"),
        ("a length past the end", b"\x81" + encode("a") + b"\xdb\x00\x00\x10\x00abc"),
        ("the never-used byte 0xc1", b"\x81" + encode("a") + b"\xc1"),
        ("a map16 header cut short", b"\xde\x00"),
    ],
)
def test_bytes_that_are_not_one_map_are_refused_and_left_as_they_are(patch: Patch, rdb: redis.Redis, case: str, raw: bytes) -> None:
    patch.store(raw)
    assert patch({"a": 2}, ["b"]) == NOT_A_MAP, case
    assert rdb.get(patch.key) == raw
    assert rdb.ttl(patch.key) == -1, "no expiry was set on a refused value"


def test_a_key_of_another_redis_type_fails_with_wrongtype(patch: Patch, rdb: redis.Redis) -> None:
    rdb.rpush(patch.key, b"x")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        patch({"a": 1})
