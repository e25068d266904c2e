"""MessagePack codec for every NATS payload and for the session bytes Flask-Session writes.

NATS messages are encoded by msgspec (`encode_message`, Structs from shared/contracts.py or
plain maps); `encode`/`decode` (msgpack-python) stay for the stored session maps. The two
agree byte for byte on the values both can hold, and each hook below hands over what only
the other one decodes to (timestamps and other MessagePack extension types).
"""

from __future__ import annotations

from typing import Any

import msgpack
import msgspec

from shared.errors import BAD_REQUEST, ServiceError


def _to_msgpack(value: Any) -> Any:
    if isinstance(value, msgspec.msgpack.Ext):
        return msgpack.ExtType(value.code, value.data)
    raise TypeError(f"cannot serialize {type(value).__name__}")


def encode(value: Any) -> bytes:
    # datetime: msgspec decodes a MessagePack timestamp to an aware datetime; it goes back as one.
    return msgpack.packb(value, use_bin_type=True, datetime=True, default=_to_msgpack)


def _to_msgspec(value: Any) -> Any:
    if isinstance(value, msgpack.Timestamp):
        return msgspec.msgpack.Ext(-1, value.to_bytes())
    raise NotImplementedError(f"cannot serialize {type(value).__name__}")


_MESSAGE_ENCODER = msgspec.msgpack.Encoder(enc_hook=_to_msgspec)
encode_message = _MESSAGE_ENCODER.encode
"""Encode a NATS payload: a Struct, or a map (whose values may hold what `decode` returned)."""


def decode(data: bytes) -> Any:
    """Decode MessagePack bytes; malformed input raises ServiceError(bad_request)."""
    try:
        # Extension types as msgspec's Ext, which both encoders write back unchanged.
        return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=msgspec.msgpack.Ext)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ServiceError(BAD_REQUEST, f"payload is not valid MessagePack: {type(exc).__name__}") from None


def decode_map(data: bytes) -> dict[str, Any]:
    value = decode(data)
    if not isinstance(value, dict):
        raise ServiceError(BAD_REQUEST, "payload must be a MessagePack map")
    return value
