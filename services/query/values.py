"""Turning database values into JSON: the rows payload (fast, column-wise) and the preview (cut cells).

The JSON form of each Python value a driver returns (documented per database type in docs/query-values.md):

- None -> null; bool -> true/false; str -> string
- int -> number when within ±(2^53 - 1), else a string (JavaScript would round it)
- float -> number; NaN, Infinity, -Infinity -> the strings "NaN", "Infinity", "-Infinity"
- Decimal -> string in plain notation ("1234.50"), so no precision is lost
- datetime -> ISO 8601, with the offset when the value has one ("2024-05-01T12:00:00+00:00")
- date -> "2024-05-01"; time -> "12:00:00" (with the offset when it has one)
- timedelta -> ISO 8601 duration ("P1DT2H3M4.5S", "-PT30S")
- UUID, IP addresses and other scalar types -> their string form
- bytes -> base64 (standard alphabet, padded)
- list/tuple -> array (each element converted); dict -> object; set -> sorted array
- JSON columns arrive as JSON text (a JsonText, or a str in a `json` column) and are
  embedded as JSON values, not strings
- ranges -> {"lower", "upper", "lower_inc", "upper_inc", "empty"}; composite records -> array;
  geometric paths -> {"closed", "points"}
- any other object -> its str(); an object without a meaningful str() ends the query with
  a clear error rather than a Python repr
"""

from __future__ import annotations

import base64
import datetime as dt
import math
from collections.abc import Callable, Sequence
from decimal import Decimal
from functools import partial
from itertools import repeat
from operator import countOf, is_not
from typing import Any

import orjson

from shared.errors import QUERY_FAILED, ServiceError

MAX_SAFE_INT = 2**53 - 1

ELLIPSIS = "…"

_NONE = type(None)
_INTEGRAL = frozenset({int, bool, _NONE})
_FLOATS = frozenset({float, _NONE})
# Types whose values orjson would write wrongly or refuse: checked or converted in Python.
_CHECKED_BASES = (int, float, dt.time, list, tuple, dict, set, frozenset)
_not_none = partial(is_not, None)


class JsonText(bytes):
    """JSON text as the database sent it, written into the output as a JSON value."""

    __slots__ = ()


def iso_duration(value: dt.timedelta) -> str:
    """A timedelta as an ISO 8601 duration: days, hours, minutes, seconds (fractional)."""
    micros = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
    sign = "-" if micros < 0 else ""
    micros = abs(micros)
    days, micros = divmod(micros, 86_400_000_000)
    hours, micros = divmod(micros, 3_600_000_000)
    minutes, micros = divmod(micros, 60_000_000)
    seconds, micros = divmod(micros, 1_000_000)
    date_part = f"{days}D" if days else ""
    time_part = ""
    if hours:
        time_part += f"{hours}H"
    if minutes:
        time_part += f"{minutes}M"
    if micros:
        time_part += f"{seconds}.{micros:06d}".rstrip("0") + "S"
    elif seconds:
        time_part += f"{seconds}S"
    if not date_part and not time_part:
        return "PT0S"
    return f"{sign}P{date_part}" + (f"T{time_part}" if time_part else "")


def _float(value: float) -> float | str:
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def json_safe(value: Any) -> Any:
    """Convert one value to plain JSON types (str, int, float, bool, None, list, dict)."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, int):
        return value if -MAX_SAFE_INT <= value <= MAX_SAFE_INT else str(value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, JsonText):
        return _json_value(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return iso_duration(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((json_safe(v) for v in value), key=str)
    return _other(value)


def _other(value: Any) -> Any:
    # asyncpg.Range and similar: a dict of their public parts; asyncpg.Record (a composite
    # value): its fields in order; asyncpg Path/Polygon: their points; everything else: its text.
    if all(hasattr(value, a) for a in ("lower", "upper", "lower_inc", "upper_inc", "isempty")):
        return {
            "lower": json_safe(value.lower),
            "upper": json_safe(value.upper),
            "lower_inc": value.lower_inc,
            "upper_inc": value.upper_inc,
            "empty": value.isempty,
        }
    if hasattr(value, "keys") and hasattr(value, "values") and callable(value.values):
        return [json_safe(v) for v in value.values()]
    if hasattr(value, "is_closed") and hasattr(value, "points"):
        points = [json_safe(p) for p in value.points]
        return points if type(value).__name__ == "Polygon" else {"closed": bool(value.is_closed), "points": points}
    kind = type(value)
    if kind.__str__ is object.__str__ and kind.__repr__ is object.__repr__:
        raise ServiceError(QUERY_FAILED, f"a value of type {kind.__module__}.{kind.__qualname__} has no JSON form")
    return str(value)


def _default(value: Any) -> Any:
    """orjson's fallback for types it does not write itself."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, JsonText):
        return orjson.Fragment(bytes(value))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dt.timedelta):
        return iso_duration(value)
    return json_safe(value)


class Column:
    """One result column: its name, its database type name, and how its values become JSON.

    `json` marks columns whose values are JSON text to embed as JSON values; `convert`,
    when given, maps each non-None driver value first (e.g. MySQL TIME as "HH:MM:SS");
    `floats` is False when the database type guarantees no float (so no NaN or infinity);
    `native` is True when every value is of a type orjson writes itself (str, int, float,
    bool, date, datetime without a special zone), which lets a batch skip conversion.
    """

    __slots__ = ("name", "type", "json", "convert", "floats", "native")

    def __init__(
        self,
        name: str,
        type: str,
        *,
        json: bool = False,
        convert: Callable[[Any], Any] | None = None,
        floats: bool = True,
        native: bool = False,
    ) -> None:
        self.name = name
        self.type = type
        self.json = json
        self.convert = convert
        self.floats = floats
        self.native = native

    def describe(self) -> dict[str, str]:
        return {"name": self.name, "type": self.type}

    def __repr__(self) -> str:
        return f"Column({self.name!r}, {self.type!r})"


def _none_safe(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def apply(value: Any) -> Any:
        return None if value is None else fn(value)

    return apply


def _json_fragment(value: Any) -> Any:
    if isinstance(value, str):
        return orjson.Fragment(value)
    if isinstance(value, (bytes, bytearray)):
        return orjson.Fragment(bytes(value))
    return json_safe(value)


def _json_value(value: Any) -> Any:
    if isinstance(value, (str, bytes, bytearray)):
        try:
            return orjson.loads(bytes(value) if isinstance(value, JsonText) else value)
        except orjson.JSONDecodeError:
            if isinstance(value, JsonText):
                return bytes(value).decode("utf-8", "replace")
            return value if isinstance(value, str) else json_safe(value)
    return json_safe(value)


class RowEncoder:
    """Encodes batches of driver rows as JSON arrays.

    The fast path hands the whole batch to orjson with a 53-bit integer limit, then checks
    that the output holds exactly as many nulls as the batch holds Nones (orjson writes NaN
    and ±Infinity as null). A batch that fails either check, which real data rarely does, is
    checked column by column and only the failing columns are converted value by value.
    """

    def __init__(self, columns: Sequence[Column]) -> None:
        self.columns = list(columns)
        self._wrappers: list[Callable[[Any], Any] | None] = []
        for column in self.columns:
            if column.json:
                self._wrappers.append(_none_safe(_json_fragment))
            elif column.convert is not None:
                self._wrappers.append(_none_safe(column.convert))
            else:
                self._wrappers.append(None)
        self._wraps = any(w is not None for w in self._wrappers)
        self._floats = any(column.floats for column in self.columns)
        self._native = bool(self.columns) and all(column.native for column in self.columns)

    def encode(self, rows: Sequence[Sequence[Any]]) -> bytes:
        """One JSON array of `rows`, each row an array of its values' JSON forms."""
        if not rows:
            return b"[]"
        if self._wraps:
            rows = self._wrap(rows)
        elif type(rows[0]) is not tuple:  # asyncpg Records and the like
            if self._native:
                # Every value is one orjson writes itself, so the only objects it hands to
                # `default` are the records: turning each into a tuple there saves a pass.
                try:
                    payload = orjson.dumps(rows, default=tuple, option=orjson.OPT_STRICT_INTEGER)
                except orjson.JSONEncodeError:
                    pass
                else:
                    if self._nulls_are_nones(payload, rows):
                        return payload
            rows = list(map(tuple, rows))
        try:
            payload = orjson.dumps(rows, default=_default, option=orjson.OPT_STRICT_INTEGER)
        except orjson.JSONEncodeError:  # an int beyond ±(2^53 - 1), a time with a zone, ...
            return self._encode_checked(rows)
        if not self._nulls_are_nones(payload, rows):
            return self._encode_checked(rows)  # a NaN or infinity, or just "null" inside a string
        return payload

    def _nulls_are_nones(self, payload: bytes, rows: Sequence[Sequence[Any]]) -> bool:
        """False when `payload` may hold a null that was a NaN or infinity (orjson writes those as null)."""
        # No null at all is the usual case; `rfind` tells it in a third of the time `count` takes.
        if not self._floats or payload.rfind(b"null") < 0:
            return True
        return payload.count(b"null") == sum(map(countOf, rows, repeat(None, len(rows))))

    def chunks(self, rows: Sequence[Sequence[Any]], limit: int, offset: int = 0) -> list[tuple[int, bytes]]:
        """`rows` encoded as (row count, JSON) chunks of at most `limit` bytes each, in order.

        A single row over `limit` raises ServiceError: no message could carry it.
        """
        if not rows:
            return []
        payload = self.encode(rows)
        if len(payload) <= limit:
            return [(len(rows), payload)]
        if len(rows) == 1:
            raise ServiceError(QUERY_FAILED, f"row {offset + 1} is {len(payload)} bytes as JSON, more than one message can carry ({limit} bytes)")
        half = len(rows) // 2
        return self.chunks(rows[:half], limit, offset) + self.chunks(rows[half:], limit, offset + half)

    def _wrap(self, rows: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
        cols = list(zip(*rows, strict=True))
        for i, wrap in enumerate(self._wrappers):
            if wrap is not None:
                cols[i] = tuple(map(wrap, cols[i]))
        return list(zip(*cols))

    def _encode_checked(self, rows: Sequence[Sequence[Any]]) -> bytes:
        cols = list(zip(*rows, strict=True))
        for i, col in enumerate(cols):
            if not _is_safe(col):
                cols[i] = tuple(map(json_safe, col))
        return orjson.dumps(list(zip(*cols)), default=_default)

    def preview(self, rows: Sequence[Sequence[Any]], cell_chars: int) -> list[list[Any]]:
        """The rows as plain JSON values with long cells cut to `cell_chars` characters."""
        out = []
        for row in rows:
            cells = []
            for column, value in zip(self.columns, row, strict=True):
                if value is not None and column.json:
                    value = _json_value(value)
                elif value is not None and column.convert is not None:
                    value = column.convert(value)
                cells.append(cut(json_safe(value), cell_chars))
            out.append(cells)
        return out


def _is_safe(col: Sequence[Any]) -> bool:
    """Whether orjson writes every value of this column as our JSON form, as it is."""
    types = set(map(type, col))
    if types <= _INTEGRAL:
        if int not in types:
            return True
        values = col if _NONE not in types else list(filter(_not_none, col))
        return bool(values) and min(values) >= -MAX_SAFE_INT and max(values) <= MAX_SAFE_INT
    if types <= _FLOATS:
        values = col if _NONE not in types else filter(_not_none, col)
        return all(map(math.isfinite, values))
    return not any(issubclass(t, _CHECKED_BASES) and t is not bool for t in types)


def cut(value: Any, limit: int) -> Any:
    """Cut a long string to `limit` characters plus "…"; an array or object longer than
    `limit` characters as JSON becomes its JSON text, cut the same way."""
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + ELLIPSIS
    if isinstance(value, (list, dict)):
        text = orjson.dumps(value).decode()
        return value if len(text) <= limit else text[:limit] + ELLIPSIS
    return value
