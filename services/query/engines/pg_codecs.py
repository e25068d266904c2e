"""asyncpg decoders for the PostgreSQL types whose default Python form is lossy or fails (docs/query-values.md).

asyncpg turns `infinity` timestamps into datetime.max, raises on BC dates, years past 9999
and `24:00:00`, folds interval months into days, and gives bit strings as BitString
objects. Here every date/time type is decoded from its binary parts ("tuple" format), so
the same decoder runs wherever the type appears: a column, an array, a range or a
composite. A value Python can hold becomes a date/datetime (written by orjson as ISO
8601); any other becomes the text PostgreSQL itself prints (DateStyle ISO, TimeZone UTC).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import asyncpg

from services.query.values import JsonText

_INT32_MAX = 2**31 - 1
_INT32_MIN = -(2**31)
_INT64_MAX = 2**63 - 1
_INT64_MIN = -(2**63)
_USECS_PER_DAY = 86_400_000_000
# PostgreSQL counts dates and timestamps from 2000-01-01; the civil algorithm below from 1970-01-01.
_PG_EPOCH_DAYS = 10_957
_PG_EPOCH = dt.datetime(2000, 1, 1)
_PG_EPOCH_UTC = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
_PG_EPOCH_DATE = dt.date(2000, 1, 1)
_MICRO = dt.timedelta(microseconds=1)


def _civil(days: int) -> tuple[int, int, int]:
    """(year, month, day) of the proleptic Gregorian day `days` after 1970-01-01, any year (H. Hinnant)."""
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (month <= 2)
    return year, month, day


def _date_text(pg_days: int) -> tuple[str, bool]:
    """The date as PostgreSQL prints it without the era, and whether it is BC."""
    year, month, day = _civil(pg_days + _PG_EPOCH_DAYS)
    bc = year <= 0
    return f"{1 - year if bc else year:04d}-{month:02d}-{day:02d}", bc


def _clock(micros: int) -> str:
    """HH:MM:SS[.ffffff] of a time of day in microseconds (24:00:00 included)."""
    seconds, fraction = divmod(micros, 1_000_000)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    text = f"{hours:02d}:{minutes:02d}:{seconds:02d}"
    return f"{text}.{fraction:06d}" if fraction else text


def _pg_seconds(seconds: int, fraction: int) -> str:
    """Seconds as PostgreSQL prints them: the fraction without trailing zeros."""
    return f"{seconds:02d}.{fraction:06d}".rstrip("0") if fraction else f"{seconds:02d}"


def decode_date(parts: tuple[int]) -> dt.date | str:
    days = parts[0]
    if days == _INT32_MAX:
        return "infinity"
    if days == _INT32_MIN:
        return "-infinity"
    try:
        return _PG_EPOCH_DATE + dt.timedelta(days=days)
    except OverflowError:
        text, bc = _date_text(days)
        return f"{text} BC" if bc else text


def _timestamp_text(micros: int, zone: str) -> str:
    days, clock = divmod(micros, _USECS_PER_DAY)
    date, bc = _date_text(days)
    seconds, fraction = divmod(clock, 1_000_000)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    text = f"{date} {hours:02d}:{minutes:02d}:{_pg_seconds(seconds, fraction)}{zone}"
    return f"{text} BC" if bc else text


def _timestamp_decoder(epoch: dt.datetime, zone: str) -> Callable[[tuple[int]], dt.datetime | str]:
    """The decoder of timestamp (naive epoch, no zone) or timestamptz (UTC epoch, zone "+00")."""

    def decode(parts: tuple[int]) -> dt.datetime | str:
        micros = parts[0]
        if micros == _INT64_MAX:
            return "infinity"
        if micros == _INT64_MIN:
            return "-infinity"
        try:
            return epoch + micros * _MICRO
        except OverflowError:
            return _timestamp_text(micros, zone)

    return decode


decode_timestamp = _timestamp_decoder(_PG_EPOCH, "")
decode_timestamptz = _timestamp_decoder(_PG_EPOCH_UTC, "+00")


def decode_time(parts: tuple[int]) -> str:
    return _clock(parts[0])


def decode_timetz(parts: tuple[int, int]) -> str:
    micros, west = parts
    east = -west
    sign = "-" if east < 0 else "+"
    hours, rest = divmod(abs(east), 3600)
    minutes, seconds = divmod(rest, 60)
    zone = f"{sign}{hours:02d}:{minutes:02d}" + (f":{seconds:02d}" if seconds else "")
    return _clock(micros) + zone


def _trunc_div(a: int, b: int) -> tuple[int, int]:
    """C's integer division (toward zero) and remainder, as PostgreSQL computes interval fields."""
    q = abs(a) // abs(b)
    if (a < 0) != (b < 0):
        q = -q
    return q, a - q * b


def decode_interval(parts: tuple[int, int, int]) -> str:
    """The interval as PostgreSQL prints it with IntervalStyle iso_8601 ("P1Y2M3DT4H5M6.5S")."""
    months, days, micros = parts
    if (months, days, micros) == (_INT32_MAX, _INT32_MAX, _INT64_MAX):
        return "infinity"
    if (months, days, micros) == (_INT32_MIN, _INT32_MIN, _INT64_MIN):
        return "-infinity"
    years, months = _trunc_div(months, 12)
    hours, micros = _trunc_div(micros, 3_600_000_000)
    minutes, micros = _trunc_div(micros, 60_000_000)
    seconds, fraction = _trunc_div(micros, 1_000_000)
    if not (years or months or days or hours or minutes or seconds or fraction):
        return "PT0S"
    text = "P" + "".join(f"{v}{unit}" for v, unit in ((years, "Y"), (months, "M"), (days, "D")) if v)
    if hours or minutes or seconds or fraction:
        text += "T" + "".join(f"{v}{unit}" for v, unit in ((hours, "H"), (minutes, "M")) if v)
        if seconds or fraction:
            sign = "-" if seconds < 0 or fraction < 0 else ""
            secs = f"{abs(seconds)}.{abs(fraction):06d}".rstrip("0") if fraction else f"{abs(seconds)}"
            text += f"{sign}{secs}S"
    return text


def decode_bits(data: bytes) -> str:
    """bit / varbit from the binary form (bit count, then the bits packed big-endian) as "0101"."""
    count = int.from_bytes(data[:4], "big")
    if not count:
        return ""
    packed = data[4:]
    return format(int.from_bytes(packed, "big"), f"0{len(packed) * 8}b")[:count]


def decode_pg_lsn(data: bytes) -> str:
    value = int.from_bytes(data, "big")
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def decode_json(data: bytes) -> JsonText:
    return JsonText(data)


def decode_jsonb(data: bytes) -> JsonText:
    return JsonText(data[1:])  # a version byte (1), then the JSON text


def _unused_encoder(_value: Any) -> Any:
    raise TypeError("query parameters are not supported")


_TUPLE_DECODERS = {
    "date": decode_date,
    "timestamp": decode_timestamp,
    "timestamptz": decode_timestamptz,
    "time": decode_time,
    "timetz": decode_timetz,
    "interval": decode_interval,
}
_BINARY_DECODERS = {
    "bit": decode_bits,
    "varbit": decode_bits,
    "pg_lsn": decode_pg_lsn,
    "json": decode_json,
    "jsonb": decode_jsonb,
}


async def install_codecs(conn: asyncpg.Connection) -> None:
    """Set this module's decoders on a new connection (they apply in arrays, ranges and composites too)."""
    for name, decoder in _TUPLE_DECODERS.items():
        await conn.set_type_codec(name, schema="pg_catalog", encoder=_unused_encoder, decoder=decoder, format="tuple")
    for name, decoder in _BINARY_DECODERS.items():
        await conn.set_type_codec(name, schema="pg_catalog", encoder=_unused_encoder, decoder=decoder, format="binary")


def decode_char(value: Any) -> Any:
    """PostgreSQL's one-byte "char" type (asyncpg gives bytes) as its text: the character, or \\ooo above 127."""
    if not isinstance(value, (bytes, bytearray)):
        return value
    if not value:
        return ""
    byte = value[0]
    return chr(byte) if byte < 128 else f"\\{byte:03o}"
