"""The JSON form of session values that JSON cannot carry as they are (docs/hardening.md, "Session values").

A Flask app shares the session with the gateway and may store anything MessagePack holds:
bytes, extension types, datetimes (Flask-Session's msgspec writes them as the timestamp
extension), non-string map keys, NaN. Each gets one documented form, so `/api/me` never fails:

* bytes: `{"$bytes": "<base64>"}`
* timestamp extension: `{"$timestamp": "2024-05-01T12:00:00.5+00:00"}` (outside Python's
  datetime range: `{"$ext": ...}` as below)
* other extension types: `{"$ext": {"type": <int>, "data": "<base64>"}}`
* NaN and infinities: `{"$float": "nan" | "inf" | "-inf"}`
* a map key that is not a string: its JSON text (`1` → `"1"`, `true` → `"true"`), bytes as base64
"""

from __future__ import annotations

import base64
import math
from typing import Any

import msgpack
import msgspec
import orjson


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, (bytes, bytearray)):
        return _b64(bytes(key))
    return orjson.dumps(jsonable(key)).decode()


def jsonable(value: Any) -> Any:
    """`value` with every part JSON cannot carry replaced by its documented form."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, (msgpack.ExtType, msgspec.msgpack.Ext)):  # ExtType is a namedtuple: before the tuple case
        return {"$ext": {"type": value.code, "data": _b64(value.data)}}
    if isinstance(value, dict):
        return {_key(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": _b64(bytes(value))}
    if isinstance(value, msgpack.Timestamp):
        try:
            return {"$timestamp": value.to_datetime().isoformat()}
        except (OverflowError, ValueError, OSError):
            return {"$ext": {"type": -1, "data": _b64(value.to_bytes())}}
    return {"$text": str(value)}  # nothing MessagePack decodes to reaches here; never fail on it
