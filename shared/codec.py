"""MessagePack codec for every NATS payload and for the session bytes Flask-Session writes."""

from __future__ import annotations

from typing import Any

import msgpack

from shared.errors import BAD_REQUEST, ServiceError


def encode(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def decode(data: bytes) -> Any:
    """Decode MessagePack bytes; malformed input raises ServiceError(bad_request)."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ServiceError(BAD_REQUEST, f"payload is not valid MessagePack: {type(exc).__name__}") from None


def decode_map(data: bytes) -> dict[str, Any]:
    value = decode(data)
    if not isinstance(value, dict):
        raise ServiceError(BAD_REQUEST, "payload must be a MessagePack map")
    return value
