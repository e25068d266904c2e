"""JSON forms of database values (services/query/values.py), the preview cut, and the query service's config."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import orjson
import pytest

from services.query.config import DEFAULT_SOURCE, QueryConfig, parse_sources
from services.query.values import Column, RowEncoder, iso_duration
from shared.errors import ConfigError


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
