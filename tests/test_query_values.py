"""JSON forms of database values (services/query/values.py), the preview cut, and the query service's config."""

from __future__ import annotations

import base64
import datetime as dt
import sqlite3
import struct
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from services.query.config import DEFAULT_SOURCE, QueryConfig, parse_sources
from services.query.engines import Engine, EngineSettings, create_engine
from services.query.values import Column, RowEncoder, iso_duration
from shared.errors import QUERY_FAILED, ConfigError, ServiceError
from tests.conftest import MysqlReader, PostgresReader
from tests.readers import mariadb_database, postgres_schema


def encode(columns: list[Column], rows: list[tuple]) -> list[list]:
    return orjson.loads(RowEncoder(columns).encode(rows))


def test_each_python_type_has_its_documented_json_form() -> None:
    utc = dt.UTC
    row = (
        2**53 - 1,
        2**53,
        -(2**63),
        Decimal("1234.50"),
        Decimal("1E+3"),
        1.5,
        float("nan"),
        float("inf"),
        float("-inf"),
        dt.datetime(2024, 5, 1, 12, 0, 0),
        dt.datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=utc),
        dt.date(2024, 5, 1),
        dt.time(13, 14, 15),
        dt.time(13, 14, 15, tzinfo=utc),
        dt.timedelta(days=1, hours=2, minutes=3, seconds=4, microseconds=500000),
        uuid.UUID(int=1),
        b"\x00\xff",
        [1, 2**60, None, Decimal("2.5")],
        None,
        True,
        "text",
    )
    columns = [Column(f"c{i}", "x") for i in range(len(row))]
    assert encode(columns, [row]) == [
        [
            2**53 - 1,
            str(2**53),
            str(-(2**63)),
            "1234.50",
            "1000",
            1.5,
            "NaN",
            "Infinity",
            "-Infinity",
            "2024-05-01T12:00:00",
            "2024-05-01T12:00:00.250000+00:00",
            "2024-05-01",
            "13:14:15",
            "13:14:15+00:00",
            "P1DT2H3M4.5S",
            "00000000-0000-0000-0000-000000000001",
            "AP8=",
            [1, str(2**60), None, "2.5"],
            None,
            True,
            "text",
        ]
    ]


def test_a_big_int_among_small_ones_is_a_string_and_the_others_stay_numbers() -> None:
    rows = [(i,) for i in range(1000)] + [(2**62,), (None,)]
    out = encode([Column("n", "int8")], rows)
    assert out[:3] == [[0], [1], [2]]
    assert out[1000] == [str(2**62)]
    assert out[1001] == [None]


class Record:
    """A row that is a sequence but not a tuple, as asyncpg returns."""

    def __init__(self, *values: object) -> None:
        self._values = values

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getitem__(self, index: int) -> object:
        return self._values[index]


def test_record_rows_of_native_columns_keep_the_checks() -> None:
    columns = [Column("n", "int8", native=True), Column("f", "float8", native=True), Column("s", "text", native=True)]
    rows = [Record(1, 1.5, "a"), Record(2**60, float("inf"), None), Record(None, float("nan"), "null")]
    assert encode(columns, rows) == [[1, 1.5, "a"], [str(2**60), "Infinity", None], [None, "NaN", "null"]]


def test_json_columns_are_embedded_as_values_and_rows_keep_their_order() -> None:
    rows = [('{"a": [1, 2]}', 1), (None, 2), ("[true]", 3)]
    out = encode([Column("doc", "jsonb", json=True), Column("n", "int4")], rows)
    assert out == [[{"a": [1, 2]}, 1], [None, 2], [[True], 3]]


def test_preview_cuts_long_cells_and_parses_json() -> None:
    encoder = RowEncoder([Column("s", "text"), Column("doc", "json", json=True), Column("b", "bytea")])
    preview = encoder.preview([("x" * 500, '{"k": "' + "y" * 500 + '"}', b"z" * 300)], 200)
    text, doc, blob = preview[0]
    assert text == "x" * 200 + "…"
    assert isinstance(doc, str) and doc.startswith('{"k":"yyy') and len(doc) == 201
    assert len(blob) == 201 and blob.endswith("…")
    assert encoder.preview([("short", '{"k": 1}', b"z")], 200) == [["short", {"k": 1}, "eg=="]]


@pytest.mark.parametrize(
    ("delta", "text"),
    [(dt.timedelta(0), "PT0S"), (dt.timedelta(seconds=-30), "-PT30S"), (dt.timedelta(days=2), "P2D"), (dt.timedelta(hours=1, microseconds=1), "PT1H0.000001S")],
)
def test_durations_are_iso_8601(delta: dt.timedelta, text: str) -> None:
    assert iso_duration(delta) == text


def test_sources_parse_from_pairs_and_from_json() -> None:
    assert parse_sources("a=sqlite:///x.db, b=postgresql://u:p@h/db") == {"a": "sqlite:///x.db", "b": "postgresql://u:p@h/db"}
    assert parse_sources('{"a": "mysql://root@h/db"}') == {"a": "mysql://root@h/db"}


def test_default_source_is_the_sample_unless_a_url_is_given(tmp_path) -> None:
    config = QueryConfig.from_env({"QUERY_SAMPLE_PATH": str(tmp_path / "s.db")})
    assert config.uses_sample and config.sources[DEFAULT_SOURCE] == f"sqlite:///{tmp_path}/s.db"
    config = QueryConfig.from_env({"QUERY_DATABASE_URL": "postgres://h/db", "QUERY_SOURCES": "x=sqlite:///x.db"})
    assert not config.uses_sample and dict(config.sources) == {"default": "postgres://h/db", "x": "sqlite:///x.db"}


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"QUERY_SOURCES": "nourl"}, "QUERY_SOURCES"),
        ({"QUERY_SOURCES": "{bad json"}, "QUERY_SOURCES"),
        ({"QUERY_SOURCES": "a=redis://h"}, "QUERY_SOURCES"),
        ({"QUERY_SOURCES": "default=sqlite:///a.db", "QUERY_DATABASE_URL": "sqlite:///b.db"}, "QUERY_DATABASE_URL"),
        ({"QUERY_DATABASE_URL": "oracle://h"}, "QUERY_DATABASE_URL"),
        ({"QUERY_TIMEOUT_S": "soon"}, "QUERY_TIMEOUT_S"),
        ({"QUERY_MAX_ROWS": "0"}, "QUERY_MAX_ROWS"),
        ({"QUERY_CHUNK_BYTES": "5000000"}, "QUERY_CHUNK_BYTES"),
        ({"OPS_PORT": "70000"}, "OPS_PORT"),
    ],
)
def test_a_bad_setting_fails_naming_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        QueryConfig.from_env(env)


# --- Every database type, through the engines, as a read-only role -----------------------
#
# Each engine connects as the session's reader role/account (tests/conftest.py), never as
# the superuser, to a schema or database this module creates and drops. A value is read through the engine and
# turned into JSON by the same RowEncoder the query service uses, in both its forms:
# the rows payload and the preview.


async def json_values(engine: Engine, sql: str) -> tuple[list[str], list, list]:
    """The column types, the first row's JSON form (rows payload), and its preview form."""
    async with engine.query(sql, 30) as cursor:
        rows = await cursor.fetch(10)
        encoder = RowEncoder(cursor.columns)
        return [c.type for c in cursor.columns], orjson.loads(encoder.encode(rows))[0], encoder.preview(rows, 10_000)[0]


@pytest.fixture(scope="module")
async def pg_types(pg_reader: PostgresReader) -> AsyncIterator[tuple[Engine, str]]:
    """A PostgreSQL engine logged in as the session's reader role, with USAGE on one schema of types."""
    setup = """
        CREATE TYPE {s}.mood AS ENUM ('sad', 'ok');
        CREATE TYPE {s}.pair AS (n int, d date);
        CREATE DOMAIN {s}.posint AS int CHECK (VALUE > 0);
    """
    async with postgres_schema(pg_reader, setup) as schema:
        engine = create_engine("pg_types", pg_reader.url, EngineSettings(pool_size=2))
        await engine.open()
        try:
            yield engine, schema
        finally:
            await engine.close()


PG_VALUES = [
    # Dates and times outside Python's range: the text PostgreSQL prints.
    ("'infinity'::timestamp", "infinity"),
    ("'-infinity'::timestamp", "-infinity"),
    ("'infinity'::timestamptz", "infinity"),
    ("'-infinity'::date", "-infinity"),
    ("'infinity'::date", "infinity"),
    ("'0044-03-15 BC'::date", "0044-03-15 BC"),
    ("'4714-11-24 BC'::date", "4714-11-24 BC"),
    ("'5874897-12-31'::date", "5874897-12-31"),
    ("'0044-03-15 12:30:00.25 BC'::timestamp", "0044-03-15 12:30:00.25 BC"),
    ("'10000-01-01 00:00:00'::timestamp", "10000-01-01 00:00:00"),
    ("'294276-12-31 23:59:59.999999'::timestamp", "294276-12-31 23:59:59.999999"),
    ("'10000-01-01 00:00:00+00'::timestamptz", "10000-01-01 00:00:00+00"),
    # ... and inside it, ISO 8601.
    ("'0001-01-01 00:00:00'::timestamp", "0001-01-01T00:00:00"),
    ("'9999-12-31 23:59:59.999999'::timestamp", "9999-12-31T23:59:59.999999"),
    ("'2024-05-01 12:00:00+02'::timestamptz", "2024-05-01T10:00:00+00:00"),
    ("'2024-05-01'::date", "2024-05-01"),
    ("'24:00:00'::time", "24:00:00"),
    ("'13:14:15.25'::time", "13:14:15.250000"),
    ("'24:00:00-15:59'::timetz", "24:00:00-15:59"),
    ("'13:14:15+05:30'::timetz", "13:14:15+05:30"),
    ("'1 year 2 mons 3 days 04:05:06.5'::interval", "P1Y2M3DT4H5M6.5S"),
    ("ARRAY['1 mon'::interval, '-1 day']", ["P1M", "P-1D"]),
    # Bit strings as 0s and 1s.
    ("B'1010'", "1010"),
    ("B'00000000'", "00000000"),
    ("B'101010101'::varbit", "101010101"),
    ("''::varbit", ""),
    ("ARRAY[B'10', B'1']::varbit[]", ["10", "1"]),
    # Numbers.
    ("'NaN'::numeric", "NaN"),
    ("'Infinity'::numeric", "Infinity"),
    ("'-Infinity'::numeric", "-Infinity"),
    ("1e-20::numeric", "0.00000000000000000001"),
    ("'123456789012345678901234567890.5'::numeric", "123456789012345678901234567890.5"),
    ("'Infinity'::float8", "Infinity"),
    ("'NaN'::float4", "NaN"),
    ("ARRAY['-Infinity'::float8, 1.5]", ["-Infinity", 1.5]),
    ("9007199254740991::int8", 9007199254740991),
    ("9007199254740992::int8", "9007199254740992"),
    ("ARRAY[9007199254740993, NULL]::int8[]", ["9007199254740993", None]),
    ("ARRAY[[1, 2], [3, 4]]", [[1, 2], [3, 4]]),
    # Ranges and multiranges, their bounds in the forms above.
    ("daterange('2024-01-01', 'infinity')", {"lower": "2024-01-01", "upper": "infinity", "lower_inc": True, "upper_inc": False, "empty": False}),
    ("'empty'::int4range", {"lower": None, "upper": None, "lower_inc": False, "upper_inc": False, "empty": True}),
    ("'(,5]'::int4range", {"lower": None, "upper": 6, "lower_inc": False, "upper_inc": False, "empty": False}),
    (
        "tstzrange('-infinity', '2024-01-01 00:00+00')",
        {"lower": "-infinity", "upper": "2024-01-01T00:00:00+00:00", "lower_inc": True, "upper_inc": False, "empty": False},
    ),
    (
        "'{{[1,3), [5,7)}}'::int4multirange",
        [
            {"lower": 1, "upper": 3, "lower_inc": True, "upper_inc": False, "empty": False},
            {"lower": 5, "upper": 7, "lower_inc": True, "upper_inc": False, "empty": False},
        ],
    ),
    (
        "ARRAY[daterange('0044-03-15 BC', '0044-03-20 BC')]",
        [{"lower": "0044-03-15 BC", "upper": "0044-03-20 BC", "lower_inc": True, "upper_inc": False, "empty": False}],
    ),
    ("ARRAY['infinity'::date, '2024-01-01']", ["infinity", "2024-01-01"]),
    # Composite values (anonymous records and named types): their fields in order.
    ("ROW(1, 'a', '0044-03-15 BC'::date, '24:00:00'::time)", [1, "a", "0044-03-15 BC", "24:00:00"]),
    ("ROW(2, 'infinity')::{s}.pair", [2, "infinity"]),
    ("ARRAY[ROW(1, '{{\"k\": 1}}'::jsonb)]", [[1, {"k": 1}]]),
    # Enums and domains: as their base values.
    ("'sad'::{s}.mood", "sad"),
    ("ARRAY['sad', 'ok']::{s}.mood[]", ["sad", "ok"]),
    ("5::{s}.posint", 5),
    # Geometric types: points as [x, y].
    ("'(1,2)'::point", [1.0, 2.0]),
    ("'((0,0),(1,1))'::box", [[1.0, 1.0], [0.0, 0.0]]),
    ("'[(0,0),(1,1)]'::lseg", [[0.0, 0.0], [1.0, 1.0]]),
    ("'{{1,2,3}}'::line", [1.0, 2.0, 3.0]),
    ("'<(0,0),1.5>'::circle", [[0.0, 0.0], 1.5]),
    ("'[(0,0),(1,1)]'::path", {"closed": False, "points": [[0.0, 0.0], [1.0, 1.0]]}),
    ("'((0,0),(1,1))'::path", {"closed": True, "points": [[0.0, 0.0], [1.0, 1.0]]}),
    ("'((0,0),(1,1),(1,0))'::polygon", [[0.0, 0.0], [1.0, 1.0], [1.0, 0.0]]),
    # Network and text-search types, XML: their text.
    ("'192.168.0.1/24'::inet", "192.168.0.1/24"),
    ("'192.168.0.1'::inet", "192.168.0.1"),
    ("'::1'::inet", "::1"),
    ("'10.0.0.0/8'::cidr", "10.0.0.0/8"),
    ("'08:00:2b:01:02:03'::macaddr", "08:00:2b:01:02:03"),
    ("'08:00:2b:01:02:03:04:05'::macaddr8", "08:00:2b:01:02:03:04:05"),
    ("'a b'::tsvector", "'a' 'b'"),
    ("'a & b'::tsquery", "'a' & 'b'"),
    ("'<x a=\"1\"/>'::xml", '<x a="1"/>'),
    # JSON: embedded as JSON, wherever it appears.
    ("'{{\"a\": [1, null, 2.5]}}'::json", {"a": [1, None, 2.5]}),
    ("'[1, \"x\"]'::jsonb", [1, "x"]),
    ("ARRAY['{{\"a\": 1}}'::jsonb, NULL]", [{"a": 1}, None]),
    ("'\"text\"'::jsonb", "text"),
    # Bytes as base64, UUIDs as text.
    ("'\\x00ff'::bytea", "AP8="),
    ("ARRAY['\\x01'::bytea]", ["AQ=="]),
    ("'00000000-0000-0000-0000-000000000001'::uuid", "00000000-0000-0000-0000-000000000001"),
    ("ARRAY['00000000-0000-0000-0000-000000000002'::uuid]", ["00000000-0000-0000-0000-000000000002"]),
    # Object identifiers and system types.
    ("1::oid", 1),
    ("'pg_class'::regclass", "pg_class"),
    ("'int4'::regtype", "integer"),
    ("'5'::xid", 5),
    ("'(0,1)'::tid", [0, 1]),
    ("'16/B374D848'::pg_lsn", "16/B374D848"),
    ("'a'::\"char\"", "a"),
    ("'10:20:10,14,15'::pg_snapshot", [10, 20, [10, 14, 15]]),
    # A type asyncpg has no binary codec for: its text.
    ("'english'::regconfig", "english"),
    ("'c1'::refcursor", "c1"),
    # Text stays text.
    ("'null'", "null"),
    ("'😀'", "😀"),
]


@pytest.mark.parametrize(("expression", "expected"), PG_VALUES, ids=[e for e, _ in PG_VALUES])
async def test_postgres_value_has_its_documented_json_form(pg_types: tuple[Engine, str], expression: str, expected: object) -> None:
    engine, schema = pg_types
    _, (value,), (preview,) = await json_values(engine, f"SELECT {expression.format(s=schema)}")
    assert value == expected
    assert preview == expected


@pytest.mark.parametrize(
    "expression",
    [
        "'1 year 2 mons 3 days 04:05:06'::interval",
        "'-1 year -2 mons'::interval",
        "'1 day -02:00:00'::interval",
        "'-00:00:01.5'::interval",
        "'0'::interval",
        "'178000000 years'::interval",
        "'-3 days 04:05:06.000001'::interval",
        "'0044-03-15 BC'::date",
        "'0001-01-01 BC'::date",
        "'0044-03-15 12:30:00.5 BC'::timestamp",
        "'20000-06-15 01:02:03.000004'::timestamp",
        "12.5::money",
    ],
)
async def test_postgres_values_outside_python_are_the_servers_own_text(pg_types: tuple[Engine, str], expression: str) -> None:
    """Compared with what the server prints for the same value (IntervalStyle iso_8601, DateStyle ISO)."""
    engine, _ = pg_types
    _, (value, text), _ = await json_values(engine, f"SELECT x, x::text FROM (SELECT {expression} AS x) v")
    assert value == text


async def test_postgres_column_types_are_named_as_the_server_names_them(pg_types: tuple[Engine, str]) -> None:
    engine, schema = pg_types
    types, _, _ = await json_values(engine, f"SELECT 'sad'::{schema}.mood, 1::{schema}.posint, B'1'::varbit, '1/0'::pg_lsn")
    assert types == ["mood", "int4", "varbit", "pg_lsn"]


MARIADB_TABLE = (
    """CREATE TABLE t (
        b64 BIT(64), y YEAR, s SET('a', 'b', 'c'), e ENUM('x', 'y'), zd DATE, zdt DATETIME, g GEOMETRY,
        f FLOAT, d6 DATETIME(6), t3 TIME(3), dec_ DECIMAL(65, 30), vb VARBINARY(4), ip INET6, u UUID)""",
    "SET SESSION sql_mode = ''",  # zero dates exist in old MySQL data; read them back as they are
    """INSERT INTO t VALUES (
        b'1111111111111111111111111111111111111111111111111111111111111111', 2024, 'a,c', 'y', '0000-00-00',
        '0000-00-00 00:00:00', ST_GeomFromText('POINT(1 2)'), 1.5, '9999-12-31 23:59:59.999999', '-838:59:59.5',
        1.5, x'00ff', '::1', '00000000-0000-0000-0000-000000000001')""",
)


@pytest.fixture(scope="module")
async def my_types(my_reader: MysqlReader) -> AsyncIterator[Engine]:
    """A MariaDB engine logged in as the session's reader account, on one database of typed columns."""
    async with mariadb_database(my_reader, MARIADB_TABLE) as url:
        engine = create_engine("my_types", url, EngineSettings(pool_size=2))
        await engine.open()
        try:
            yield engine
        finally:
            await engine.close()


MARIADB_COLUMNS = [
    ("b64", "BIT", "18446744073709551615"),
    ("y", "YEAR", 2024),
    ("s", "SET", "a,c"),
    ("e", "ENUM", "y"),
    ("zd", "DATE", "0000-00-00"),
    ("zdt", "DATETIME", "0000-00-00 00:00:00"),
    ("g", "GEOMETRY", base64.b64encode(b"\x00\x00\x00\x00\x01\x01\x00\x00\x00" + struct.pack("<dd", 1, 2)).decode()),
    ("f", "FLOAT", 1.5),
    ("d6", "DATETIME", "9999-12-31T23:59:59.999999"),
    ("t3", "TIME", "-838:59:59.500000"),
    ("dec_", "DECIMAL", "1.500000000000000000000000000000"),
    ("vb", "VARBINARY", "AP8="),
    ("ip", "CHAR", "::1"),
    ("u", "CHAR", "00000000-0000-0000-0000-000000000001"),
]


@pytest.mark.parametrize(("column", "type_name", "expected"), MARIADB_COLUMNS, ids=[c for c, _, _ in MARIADB_COLUMNS])
async def test_mariadb_value_has_its_documented_json_form(my_types: Engine, column: str, type_name: str, expected: object) -> None:
    types, (value,), (preview,) = await json_values(my_types, f"SELECT {column} FROM t")
    assert types == [type_name]
    assert value == expected
    assert preview == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("CAST('838:59:59' AS TIME)", "838:59:59"),
        ("CAST(18446744073709551615 AS UNSIGNED)", "18446744073709551615"),
        ("CAST(-9007199254740991 AS SIGNED)", -9007199254740991),
        ("X'00FF'", "AP8="),
        ("JSON_OBJECT('a', 1)", '{"a": 1}'),
        ("'😀'", "😀"),
        ("NULL", None),
    ],
)
async def test_mariadb_expression_has_its_documented_json_form(my_types: Engine, expression: str, expected: object) -> None:
    _, (value,), (preview,) = await json_values(my_types, f"SELECT {expression}")
    assert value == expected
    assert preview == expected


@pytest.fixture(scope="module")
async def lite_reader(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Engine]:
    path: Path = tmp_path_factory.mktemp("values") / "values.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (i INTEGER, r REAL, s TEXT, b BLOB)")
    conn.execute("INSERT INTO t VALUES (?, ?, ?, ?)", (2**63 - 1, float("-inf"), "😀", b"\x00\xff"))
    conn.commit()
    conn.close()
    engine = create_engine("lite_reader", f"sqlite:///{path}", EngineSettings(pool_size=1))
    await engine.open()
    yield engine
    await engine.close()


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("i", str(2**63 - 1)),
        ("r", "-Infinity"),
        ("9e999", "Infinity"),
        ("s", "😀"),
        ("b", "AP8="),
        ("0.1", 0.1),
        ("NULL", None),
        ("CAST('2024-05-01' AS TEXT)", "2024-05-01"),
    ],
)
async def test_sqlite_value_has_its_documented_json_form(lite_reader: Engine, expression: str, expected: object) -> None:
    _, (value,), (preview,) = await json_values(lite_reader, f"SELECT {expression} FROM t")
    assert value == expected
    assert preview == expected


async def test_sqlite_text_that_is_not_utf8_is_a_clear_query_error(lite_reader: Engine) -> None:
    with pytest.raises(ServiceError) as caught:
        await json_values(lite_reader, "SELECT CAST(x'ff' AS TEXT)")
    assert caught.value.code == QUERY_FAILED
    assert "UTF-8" in caught.value.message
