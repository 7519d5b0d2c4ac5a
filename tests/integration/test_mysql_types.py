"""Exact values across engines: MariaDB ⇄ PostgreSQL (and SQLite), the conversion table of connectors/mysql/values.py.

Each test replicates through the real capture triggers and apply sessions and compares what arrives with
what was written, value by value.
"""

from __future__ import annotations

import logging
import struct
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import cli, pg_exec, pg_rows, run_once, write_node
from tests.mysql_helpers import my_exec, my_rows

pytestmark = [pytest.mark.postgres, pytest.mark.mariadb]

MY_TYPED = """CREATE TABLE typed (
  id int PRIMARY KEY, i8 tinyint, u8 tinyint unsigned, flag tinyint(1), i16 smallint, i32 int, u32 int unsigned,
  i64 bigint, u64 bigint unsigned, d decimal(30,10), f float, db double, c char(4), vc varchar(100), tx text,
  bn varbinary(16), bl blob, dt date, tm time(6), dtm datetime(6), ts timestamp(6) NULL, y year,
  e enum('甲','乙'), st set('x','y','z'), j json, b bit(10), g bigint AS (i32 * 2) VIRTUAL
) CHARSET utf8mb4"""

PG_TYPED = """CREATE TABLE typed (
  id integer PRIMARY KEY, i8 smallint, u8 smallint, flag boolean, i16 smallint, i32 integer, u32 bigint,
  i64 bigint, u64 numeric(20,0), d numeric(30,10), f real, db double precision, c text, vc varchar(100), tx text,
  bn bytea, bl bytea, dt date, tm time(6), dtm timestamp(6), ts timestamptz, y smallint, e text, st text,
  j jsonb, b integer, g bigint GENERATED ALWAYS AS (i32::bigint * 2) STORED
)"""

COLUMNS = ["id", "i8", "u8", "flag", "i16", "i32", "u32", "i64", "u64", "d", "f", "db", "c", "vc", "tx", "bn", "bl",
           "dt", "tm", "dtm", "ts", "y", "e", "st", "j", "b"]

EDGE_ROWS = [
    (1, -128, 255, 1, -32768, -2147483648, 4294967295, -9223372036854775808, 18446744073709551615,
     Decimal("-12345678901234567890.0123456789"), 0.1, 0.1, "ab", "县级数据😀", "北京 ä €𝄞",
     b"\x00\xff\x10", b"\x00" * 5 + "😀".encode(), date(2026, 11, 21), time(23, 59, 59, 999999),
     datetime(2026, 11, 21, 23, 59, 59, 999999), datetime(2026, 11, 21, 8, 0, 0, 250000, tzinfo=timezone.utc),
     2026, "乙", "x,z", {"金额": Decimal("12.50"), "list": [1, 0.1, None]}, 513),
    (2, 127, 0, 0, 32767, 2147483647, 0, 9223372036854775807, 0, Decimal("0.0000000001"), -3.4e38,
     1.7976931348623157e308, "", "", "", b"", b"", date(1000, 1, 1), time(0, 0), datetime(1000, 1, 1),
     datetime(1970, 1, 1, 0, 0, 1, tzinfo=timezone.utc), 1901, "甲", "", [], 0),
    (3,) + (None,) * 25,
]


def _my_insert(url: str, table: str, rows: list[tuple]) -> None:
    from engine.jsontext import dumps_exact

    placeholders = ", ".join(["%s"] * len(COLUMNS))
    conn_rows = [tuple(dumps_exact(v) if isinstance(v, (dict, list)) else
                       v.astimezone(timezone.utc).replace(tzinfo=None) if isinstance(v, datetime) and v.tzinfo else v
                       for v in row) for row in rows]
    from tests.mysql_helpers import _connect

    conn = _connect(url)
    try:
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {table} ({', '.join(COLUMNS)}) VALUES ({placeholders})", conn_rows)
    finally:
        conn.close()


def _pipeline(tmp_path, source: str, target: str, target_table: str = "typed", name: str = "p") -> object:
    return write_node(tmp_path / f"{name}.yaml", {"src": source, "dst": target}, [
        {"name": name, "source": {"database": "src", "tables": ["typed"]}, "target": {"database": "dst"},
         "mappings": [{"source": "typed", "target": target_table}]}])


def _float32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


def _pg_expected(row: tuple) -> tuple:
    """How a MariaDB row reads back from the PostgreSQL table (the documented conversions)."""
    out = list(row)
    index = {c: i for i, c in enumerate(COLUMNS)}
    if out[index["flag"]] is not None:
        out[index["flag"]] = bool(out[index["flag"]])
    j = out[index["j"]]
    if j is not None:
        import json

        from engine.jsontext import dumps_exact
        out[index["j"]] = json.loads(dumps_exact(j))  # jsonb holds numbers as numeric; psycopg reads floats
    return tuple(out)


def test_mariadb_to_postgres_values(tmp_path, maria_databases, pg_databases):
    source, _ = maria_databases
    _, target = pg_databases
    my_exec(source, MY_TYPED)
    pg_exec(target, PG_TYPED)
    config = _pipeline(tmp_path, source, target, "public.typed")
    cli("triggers", "install", "--config", str(config), "--pipeline", "p")
    _my_insert(source, "typed", EDGE_ROWS)
    run_once(config)
    got = pg_rows(target, f"SELECT {', '.join(COLUMNS)} FROM typed ORDER BY id")
    for expected, row in zip(EDGE_ROWS, got):
        for column, want, have in zip(COLUMNS, _pg_expected(expected), row):
            if column == "ts" and have is not None:
                have = have.astimezone(timezone.utc)
            if column == "f" and have is not None:  # real: the same single-precision number
                have, want = _float32(have), _float32(want)
            if column == "j" and have is not None:
                import json
                have = json.loads(json.dumps(have))
            assert have == want, f"row {expected[0]} column {column}: {have!r} != {want!r}"
    assert pg_rows(target, "SELECT g FROM typed WHERE id = 1") == [(-4294967296,)]  # computed by the target


def test_postgres_to_mariadb_values(tmp_path, pg_databases, maria_databases):
    source, _ = pg_databases
    target, _ = maria_databases
    pg_exec(source, PG_TYPED.replace("u64 numeric(20,0)", "u64 numeric(20,0)"))
    my_exec(target, MY_TYPED)
    config = _pipeline(tmp_path, source, target)
    cli("triggers", "install", "--config", str(config), "--pipeline", "p")
    import psycopg
    from psycopg.types.json import Jsonb

    from engine.jsontext import dumps_exact
    with psycopg.connect(source, autocommit=True) as conn:
        for row in EDGE_ROWS:
            values = list(_pg_expected(row))
            values[COLUMNS.index("j")] = None if row[COLUMNS.index("j")] is None else \
                Jsonb(row[COLUMNS.index("j")], dumps=dumps_exact)
            conn.execute(f"INSERT INTO typed ({', '.join(COLUMNS)}) VALUES ({', '.join(['%s'] * len(COLUMNS))})",
                         values)
    run_once(config)
    assert my_rows(target, "SELECT count(*) FROM tiersync_dead_letter") == [(0,)], \
        cli("dead-letters", "--config", str(config), "--pipeline", "p").output
    got = my_rows(target, f"SELECT {', '.join(COLUMNS)} FROM typed ORDER BY id")
    for expected, row in zip(EDGE_ROWS, got):
        for column, want, have in zip(COLUMNS, expected, row):
            if want is None:
                assert have is None, column
            elif column == "ts":
                assert have == want.replace(tzinfo=None), column  # the test reads in UTC
            elif column == "tm":
                assert have == timedelta(hours=want.hour, minutes=want.minute, seconds=want.second,
                                         microseconds=want.microsecond), column
            elif column == "f":
                assert _float32(have) == _float32(want), column
            elif column == "j":
                import json
                assert json.loads(have, parse_float=Decimal) == json.loads(dumps_exact(want), parse_float=Decimal)
            elif column == "st":
                assert have == (set(want.split(",")) if want else set()) or have == want, column
            elif column == "b":
                assert int.from_bytes(have, "big") == want, column
            else:
                assert have == want, f"column {column}: {have!r} != {want!r}"


def test_zero_dates_become_null_with_a_counted_warning(tmp_path, maria_databases, pg_databases, caplog):
    from connectors.mysql.values import ZERO_DATES

    source, _ = maria_databases
    _, target = pg_databases
    my_exec(source, "CREATE TABLE z (id int PRIMARY KEY, d date, dt datetime, ts timestamp NULL)")
    pg_exec(target, "CREATE TABLE z (id int PRIMARY KEY, d date, dt timestamp, ts timestamptz)")
    config = write_node(tmp_path / "z.yaml", {"src": source, "dst": target}, [
        {"name": "z", "source": {"database": "src", "tables": ["z"]}, "target": {"database": "dst"},
         "mappings": [{"source": "z", "target": "public.z"}]}])
    cli("triggers", "install", "--config", str(config), "--pipeline", "z")
    my_exec(source, "SET SESSION sql_mode = ''",
            "INSERT INTO z VALUES (1, '0000-00-00', '0000-00-00 00:00:00', '0000-00-00 00:00:00'), "
            "(2, '2026-11-21', '2026-11-21 10:00:00', '2026-11-21 10:00:00')")
    before = sum(v for (table, _), v in ZERO_DATES.items() if table.endswith(".z"))
    with caplog.at_level(logging.WARNING):
        run_once(config)
    assert pg_rows(target, "SELECT id, d, dt, ts FROM z ORDER BY id") == [
        (1, None, None, None),
        (2, date(2026, 11, 21), datetime(2026, 11, 21, 10), datetime(2026, 11, 21, 10, tzinfo=timezone.utc))]
    assert sum(v for (table, _), v in ZERO_DATES.items() if table.endswith(".z")) - before == 3
    assert "zero date" in caplog.text


def test_kept_zero_dates_and_unconvertible_values_become_dead_letters(tmp_path, maria_databases, pg_databases):
    source, _ = maria_databases
    _, target = pg_databases
    my_exec(source, "CREATE TABLE z (id int PRIMARY KEY, d date, flag tinyint(1), t time)")
    pg_exec(target, "CREATE TABLE z (id int PRIMARY KEY, d date, flag boolean, t time)")
    config = write_node(tmp_path / "z.yaml", {"src": source + "?zero_dates=keep", "dst": target}, [
        {"name": "z", "source": {"database": "src", "tables": ["z"]}, "target": {"database": "dst"},
         "mappings": [{"source": "z", "target": "public.z"}]}])
    cli("triggers", "install", "--config", str(config), "--pipeline", "z")
    my_exec(source, "SET SESSION sql_mode = ''",
            "INSERT INTO z VALUES (1, '0000-00-00', 1, '01:00'), (2, '2026-11-21', 2, '01:00'), "
            "(3, '2026-11-21', 0, '-12:00:01'), (4, '2026-11-21', 1, '23:59:59')")
    run_once(config)
    assert pg_rows(target, "SELECT id, d, flag, t FROM z ORDER BY id") == [
        (4, date(2026, 11, 21), True, time(23, 59, 59))]
    letters = cli("dead-letters", "--config", str(config), "--pipeline", "z").output
    assert "key=[1]" in letters and "key=[2]" in letters and "key=[3]" in letters, letters


def test_values_a_mariadb_column_cannot_hold_exactly_are_refused(tmp_path, pg_databases, maria_databases):
    source, _ = pg_databases
    target, _ = maria_databases
    pg_exec(source, "CREATE TABLE n (id int PRIMARY KEY, d numeric, f double precision, t timestamp(6), u bigint)")
    my_exec(target, "CREATE TABLE n (id int PRIMARY KEY, d decimal(10,2), f double, t datetime(0), u int unsigned)")
    config = write_node(tmp_path / "n.yaml", {"src": source, "dst": target}, [
        {"name": "n", "source": {"database": "src", "tables": ["n"]}, "target": {"database": "dst"},
         "mappings": [{"source": "n", "target": "n"}]}])
    cli("triggers", "install", "--config", str(config), "--pipeline", "n")
    pg_exec(source, "INSERT INTO n VALUES (1, 1.005, 1, '2026-01-01', 1), (2, 1.5, 'NaN', '2026-01-01', 1), "
                    "(3, 1.5, 1, '2026-01-01 00:00:00.5', 1), (4, 1.5, 1, '2026-01-01', -1), "
                    "(5, 12345678.91, 'Infinity', '2026-01-01', 1), (6, 99999999.99, 2.5, '2026-01-01 10:00', 7)")
    run_once(config)
    assert my_rows(target, "SELECT id, d, f, t, u FROM n") == [(6, Decimal("99999999.99"), 2.5,
                                                               datetime(2026, 1, 1, 10), 7)]
    letters = cli("dead-letters", "--config", str(config), "--pipeline", "n").output
    for key in range(1, 6):
        assert f"key=[{key}]" in letters, letters


# ---------------------------------------------------------------- property-based round trips

ROUND_TRIP_MY = """CREATE TABLE rt (
  id int PRIMARY KEY, i64 bigint, u64 bigint unsigned, d decimal(24,6), db double, vc varchar(60), bl blob,
  dtm datetime(6), ts timestamp(6) NULL, j json
) CHARSET utf8mb4"""
ROUND_TRIP_PG = """CREATE TABLE rt (
  id integer PRIMARY KEY, i64 bigint, u64 numeric(20,0), d numeric(24,6), db double precision, vc varchar(60),
  bl bytea, dtm timestamp(6), ts timestamptz, j jsonb
)"""

_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=60)
_moment = st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59))
_instant = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2038, 1, 18))
_json = st.recursive(st.none() | st.booleans() | st.integers(-2**53, 2**53) | _text,
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
                     max_leaves=6)
_row = st.tuples(
    st.integers(-2**63, 2**63 - 1), st.integers(0, 2**64 - 1),
    st.decimals(min_value=Decimal("-999999999999999999"), max_value=Decimal("999999999999999999"),
                places=6, allow_nan=False, allow_infinity=False),
    st.floats(allow_nan=False, allow_infinity=False, width=64), _text, st.binary(max_size=40),
    _moment, _instant, _json.filter(lambda doc: doc is not None))  # a top-level JSON null reads as SQL NULL


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory, maria_server, pg_server):
    """MariaDB county → PostgreSQL city → MariaDB province, each leg by triggers."""
    import os

    tmp = tmp_path_factory.mktemp("rt")
    county = maria_server.create_database(f"rt_county_{os.getpid()}")
    province = maria_server.create_database(f"rt_province_{os.getpid()}")
    city = pg_server.create_database(f"rt_city_{os.getpid()}")
    my_exec(county, ROUND_TRIP_MY)
    my_exec(province, ROUND_TRIP_MY)
    pg_exec(city, ROUND_TRIP_PG)
    config = write_node(tmp / "rt.yaml", {"county": county, "city": city, "province": province}, [
        {"name": "up", "source": {"database": "county", "tables": ["rt"]}, "target": {"database": "city"},
         "mappings": [{"source": "rt", "target": "public.rt"}]},
        {"name": "up2", "source": {"database": "city", "tables": ["rt"]}, "target": {"database": "province"}},
    ])
    for name in ("up", "up2"):
        cli("triggers", "install", "--config", str(config), "--pipeline", name)
    return config, county, city, province


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_row, min_size=1, max_size=40))
def test_round_trip_mariadb_postgres_mariadb(round_trip, rows):
    config, county, city, province = round_trip
    my_exec(county, "DELETE FROM rt")
    from tests.mysql_helpers import _connect

    conn = _connect(county)
    try:
        with conn.cursor() as cur:
            from engine.jsontext import dumps_exact

            cur.executemany("INSERT INTO rt VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                            [(i, *r[:8], dumps_exact(r[8])) for i, r in enumerate(rows)])
    finally:
        conn.close()
    run_once(config, "up")
    run_once(config, "up2")
    sent = my_rows(county, "SELECT * FROM rt ORDER BY id")
    back = my_rows(province, "SELECT * FROM rt ORDER BY id")
    assert len(sent) == len(back) == len(rows)
    for a, b in zip(sent, back):
        assert a[:9] == b[:9]
        import json
        assert json.loads(a[9], parse_float=Decimal) == json.loads(b[9], parse_float=Decimal)
    assert len(pg_rows(city, "SELECT id FROM rt")) == len(rows)


def test_timestamps_written_in_any_session_time_zone_arrive_as_the_same_instant(tmp_path, maria_databases,
                                                                                pg_databases):
    source, _ = maria_databases
    _, target = pg_databases
    my_exec(source, "CREATE TABLE tz (id int PRIMARY KEY, ts timestamp(6) NULL, dt datetime(6))")
    pg_exec(target, "CREATE TABLE tz (id int PRIMARY KEY, ts timestamptz, dt timestamp(6))")
    config = write_node(tmp_path / "tz.yaml", {"src": source, "dst": target}, [
        {"name": "tz", "source": {"database": "src", "tables": ["tz"]}, "target": {"database": "dst"},
         "mappings": [{"source": "tz", "target": "public.tz"}]}])
    cli("triggers", "install", "--config", str(config), "--pipeline", "tz")
    my_exec(source, "SET time_zone = '+08:00'",
            "INSERT INTO tz VALUES (1, '2026-11-21 08:00:00.5', '2026-11-21 08:00:00.5')",
            "SET time_zone = '-05:00'", "INSERT INTO tz VALUES (2, '2026-11-20 19:00:00.5', '2026-11-21 08:00:00.5')",
            "SET time_zone = '+08:00'", "UPDATE tz SET ts = '2026-11-21 09:00:00' WHERE id = 2")
    run_once(config)
    assert pg_rows(target, "SELECT id, ts, dt FROM tz ORDER BY id") == [
        (1, datetime(2026, 11, 21, 0, 0, 0, 500000, tzinfo=timezone.utc), datetime(2026, 11, 21, 8, 0, 0, 500000)),
        (2, datetime(2026, 11, 21, 1, 0, tzinfo=timezone.utc), datetime(2026, 11, 21, 8, 0, 0, 500000))]
