"""Exact round trips of values through tiersync: PostgreSQL → PostgreSQL and SQLite → PostgreSQL.

Every column is compared as PostgreSQL prints it (``col::text``) from both sides in sessions with the
same settings, so a value that changes in any way — a lost digit, a changed time zone offset, a trimmed
padding, a lost scale — fails the test.
"""

from __future__ import annotations

import itertools
import json
import math
import sqlite3
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from uuid import UUID

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Json, Jsonb

from tests.helpers import cli, pg_exec, pg_rows, run_once, write_node

pytestmark = pytest.mark.postgres

# ---------------------------------------------------------------------------------------------------------------
# (a) PostgreSQL → PostgreSQL

COLUMNS = {
    "c_smallint": "smallint",
    "c_integer": "integer",
    "c_bigint": "bigint",
    "c_numeric": "numeric(20,6)",
    "c_numeric_free": "numeric",
    "c_real": "real",
    "c_double": "double precision",
    "c_text": "text",
    "c_char": "char(10)",
    "c_varchar": "varchar(20)",
    "c_bool": "boolean",
    "c_date": "date",
    "c_time": "time",
    "c_timetz": "timetz",
    "c_timestamp": "timestamp",
    "c_timestamptz": "timestamptz",
    "c_interval": "interval",
    "c_json": "json",
    "c_jsonb": "jsonb",
    "c_bytea": "bytea",
    "c_uuid": "uuid",
    "c_int_array": "integer[]",
    "c_text_array": "text[]",
    "c_numeric_array": "numeric[]",
    "c_tstz_array": "timestamptz[]",
}
TABLE_DDL = ("CREATE TABLE public.all_types (id integer PRIMARY KEY, "
             + ", ".join(f"{name} {type_}" for name, type_ in COLUMNS.items()) + ")")

ALL_BYTES = bytes(range(256))
BIG_TEXT = ("大数据同步 tiersync 😀𠀀 " * 300_000)[:5_000_000]  # 5 million characters, ~9 MB of UTF-8

JSON_DOC = ('{"name": "企业 😀 𠀀", "nested": {"a": [1, 2.5, {"b": null}], "empty": {}, "list": []}, '
            '"numbers": [1.10, 12345678901234567890, -0.000001, 1e+20, 0.1234567890123456789012345, -0], '
            '"flags": [true, false, null], "escaped": "quote \\" backslash \\\\ tab \\t newline \\n \\u00e9"}')


def _insert(values: dict) -> str:
    names = ", ".join(["id"] + list(values))
    return f"INSERT INTO all_types ({names}) VALUES ({', '.join(['%s'] * (len(values) + 1))})"


def insert_rows(url: str, rows: list[dict], *setup: str) -> None:
    """Insert with real parameters (no string building), optionally in a session with other settings."""
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in setup:
            conn.execute(statement)
        for row in rows:
            values = {k: v for k, v in row.items() if k != "id"}
            conn.execute(_insert(values), [row["id"], *values.values()])


ROWS = [
    {  # ordinary values
        "id": 1, "c_smallint": 7, "c_integer": 42, "c_bigint": 1234567890123, "c_numeric": Decimal("1.500000"),
        "c_numeric_free": Decimal("12345678901234.123456"), "c_real": 1.5, "c_double": 0.1 + 0.2,
        "c_text": "北京市海淀区 😀 𠀀 tab\there newline\nback\\slash 'quote' \"dq\"", "c_char": "ab",
        "c_varchar": "中文varchar", "c_bool": True, "c_date": date(2024, 2, 29), "c_time": time(4, 5, 6, 789000),
        "c_timetz": time(4, 5, 6, 789000, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        "c_timestamp": datetime(2024, 2, 29, 23, 59, 59, 999999),
        "c_timestamptz": datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-3))),
        "c_interval": None, "c_json": Json({"a": 1}), "c_jsonb": Jsonb({"a": 1}), "c_bytea": b"\x00\x01abc\xff",
        "c_uuid": UUID("12345678-1234-5678-1234-567812345678"), "c_int_array": [1, None, 3],
        "c_text_array": ["a", None, "b,c", 'q"uote', "中文", "NULL", "", " spaced ", "{brace}", "back\\slash"],
        "c_numeric_array": [Decimal("1.10"), None, Decimal("-0.000001")],
        "c_tstz_array": [datetime(2024, 1, 1, tzinfo=timezone.utc), None],
    },
    {  # minimums and small magnitudes
        "id": 2, "c_smallint": -32768, "c_integer": -2147483648, "c_bigint": -9223372036854775808,
        "c_numeric": Decimal("-99999999999999.999999"), "c_numeric_free": Decimal("-0.000001"),
        "c_real": 1.401298464324817e-45, "c_double": 5e-324, "c_text": "", "c_char": "", "c_varchar": "",
        "c_bool": False, "c_date": date(1, 1, 1), "c_time": time(0, 0), "c_timetz": None,
        "c_timestamp": datetime(1, 1, 1), "c_timestamptz": datetime(1, 1, 1, tzinfo=timezone.utc),
        "c_interval": None, "c_json": Json([]), "c_jsonb": Jsonb({}), "c_bytea": b"",
        "c_uuid": UUID(int=0), "c_int_array": [], "c_text_array": [], "c_numeric_array": [], "c_tstz_array": [],
    },
    {  # maximums
        "id": 3, "c_smallint": 32767, "c_integer": 2147483647, "c_bigint": 9223372036854775807,
        "c_numeric": Decimal("99999999999999.999999"), "c_numeric_free": Decimal("1" + "0" * 60 + ".0000000001"),
        "c_real": 3.4028234663852886e38, "c_double": 1e308, "c_text": "𠀀" * 1000, "c_char": "1234567890",
        "c_varchar": "二十个字符二十个字符二十个字符二十个字符", "c_bool": True, "c_date": date(9999, 12, 31),
        "c_time": time(23, 59, 59, 999999), "c_timetz": time(23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-12))),
        "c_timestamp": datetime(9999, 12, 31, 23, 59, 59, 999999),
        "c_timestamptz": datetime(9999, 12, 31, 15, 59, 59, 999999, tzinfo=timezone.utc),
        "c_interval": timedelta(days=999999, seconds=86399, microseconds=999999), "c_json": None, "c_jsonb": None,
        "c_bytea": ALL_BYTES, "c_uuid": UUID(int=2**128 - 1), "c_int_array": [2147483647, -2147483648],
        "c_text_array": [None], "c_numeric_array": [Decimal("NaN")], "c_tstz_array": None,
    },
    {"id": 4},  # NULL in every non-key column
    {"id": 5, "c_text": BIG_TEXT},
    {"id": 6, "c_text": "to be deleted", "c_bytea": ALL_BYTES},
]

# Values PostgreSQL accepts that Python cannot hold, or that only a literal can express: inserted as SQL.
SQL_ROWS = [
    """INSERT INTO all_types (id, c_numeric, c_numeric_free, c_real, c_double, c_date, c_time, c_timestamp,
        c_timestamptz, c_interval, c_json, c_jsonb, c_char, c_int_array, c_text_array, c_numeric_array, c_tstz_array)
    VALUES (7, 'NaN', 'NaN', 'Infinity', '-Infinity', 'infinity', '24:00:00', '-infinity', 'infinity',
        '1 year 2 mons 3 days 04:05:06.789', '{"a":1.10,  "b" : [1, 2]}', '{"a": 1.10, "big": 12345678901234567890}',
        'x', '{{1,2},{3,4}}', '{{"a","b"},{NULL,"d"}}', '{Infinity,-Infinity,NaN}',
        '{infinity,-infinity,"2024-01-01 00:00:00+00"}')""",
    """INSERT INTO all_types (id, c_real, c_double, c_date, c_timestamp, c_timestamptz, c_interval, c_numeric_free,
        c_json, c_jsonb)
    VALUES (8, '-0', '-0', '0044-03-15 BC', '0044-03-15 12:00:00 BC', '4713-01-01 00:00:00+00 BC',
        '-1 year -2 mons +3 days -04:05:06.000001', 'Infinity', '-0', '"字符串"')""",
    """INSERT INTO all_types (id, c_real, c_double, c_numeric_free, c_date, c_timestamp, c_timestamptz, c_interval,
        c_json, c_jsonb, c_bytea)
    VALUES (9, '1e-45', '1.7976931348623157e308', '-Infinity', '294276-12-31', '294276-12-31 23:59:59.999999',
        '1900-01-01 00:00:00', '178000000 years', '12345678901234567890.5e3',
        '[1.000, 1e-7, -0.0, 0.1, 0.30000000000000004, 1.7976931348623157e308]', '\\x00ff')""",
]

HUGE = "9" * 5000  # more digits than Python converts from text to int by default (4300)
SQL_ROWS.append(f"""INSERT INTO all_types (id, c_numeric_free, c_json, c_jsonb, c_numeric_array)
    VALUES (15, '{HUGE}.{HUGE}', '[{HUGE}, -{HUGE}.5]', '{{"n": -{HUGE}}}', '{{{HUGE},-0.{HUGE}}}')""")
SQL_ROWS.append(f"""INSERT INTO all_types (id, c_numeric_free) VALUES (16, '-{HUGE}')""")
JSON_ROWS = [{"id": 17, "c_json": Json(None, dumps=lambda _: JSON_DOC),
              "c_jsonb": Jsonb(None, dumps=lambda _: JSON_DOC)}]

# the same table written by a session in another time zone, and with non-default output settings
NEW_YORK_ROWS = [
    {"id": 10, "c_timestamptz": datetime(2024, 3, 10, 2, 30), "c_timestamp": datetime(2024, 3, 10, 2, 30),
     "c_timetz": time(12, 0), "c_tstz_array": [datetime(2024, 11, 3, 1, 30)], "c_double": 0.1 + 0.2},
]
NEW_YORK_SQL = [
    "INSERT INTO all_types (id, c_timestamptz, c_timetz) VALUES (11, '2024-11-03 01:30:00', '12:00:00')",
    "INSERT INTO all_types (id, c_timestamptz) VALUES (12, '1883-11-18 12:00:00')",  # before standard time: LMT
]
OTHER_SESSION_SQL = [
    "INSERT INTO all_types (id, c_interval, c_bytea, c_date, c_timestamp, c_timestamptz) "
    "VALUES (13, '1 year 2 mons 3 days 04:05:06.789', '\\x00015c78ff'::bytea, '2024-02-29', "
    "'2024-02-29 01:02:03.456789', '2024-02-29 01:02:03.456789+05:45')",
    "INSERT INTO all_types (id, c_interval) VALUES (14, '-1 year -2 mons +3 days -04:05:06.000001')",
]


UPDATES = [
    "UPDATE all_types SET c_numeric = c_numeric + 0.000001, c_text = c_text || ' 更新 🎉', c_jsonb = "
    "jsonb_set(c_jsonb, '{b}', '[1.10, \"两\", {\"c\": 12345678901234567890}]'), c_int_array = c_int_array || 4, "
    "c_real = 0.1, c_double = 1e-308, c_timestamptz = '2000-01-01 00:00:00+14' WHERE id = 1",
    "UPDATE all_types SET c_bigint = c_bigint + 1, c_bytea = '\\x'::bytea || c_bytea, c_char = 'z' WHERE id = 2",
    "UPDATE all_types SET c_text = c_text || '!', c_bytea = c_bytea || '\\x00'::bytea WHERE id = 5",
    "UPDATE all_types SET c_text = c_text WHERE id = 3",  # changes nothing: not even captured
    "DELETE FROM all_types WHERE id = 6",
]

# A json column keeps its document's exact text in PostgreSQL; tiersync carries the document, not the text.
# KNOWN LIMITATION (documented, asserted below rather than skipped): the trigger embeds the document in the
# row image (row_to_json) and the reader parses the whole image, so what reaches the target is the same
# document — same keys in the same order, same values, numbers exact to the last digit and scale (1.10 stays
# 1.10) — re-written in a normal layout: one space after ',' and ':', escapes such as \u00e9 written as the
# character, each number as Python's Decimal prints it with a lowercase exponent (1e+20 and -0.000001 stay,
# 1e-07 becomes 1e-7, 12345678901234567890.5e3 becomes 1.23456789012345678905e+22), a duplicated key only once
# (the last, as jsonb keeps it). Every json value is also compared as jsonb, exactly; jsonb is exact as text.
JSON_NORMALISED = {
    7: '{"a": 1.10, "b": [1, 2]}',
    9: "1.23456789012345678905e+22",
    17: JSON_DOC.replace("\\u00e9", "é"),
}


def compared_rows(url: str, zone: str) -> dict[str, list[tuple]]:
    """Every column as PostgreSQL prints it, in a session with the given time zone and default output styles."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"SET TIME ZONE '{zone}'")
        conn.execute("SET extra_float_digits = 1")
        conn.execute("SET IntervalStyle = 'postgres'")
        conn.execute("SET bytea_output = 'hex'")
        conn.execute("SET DateStyle = 'ISO, YMD'")
        out = {}
        for column in COLUMNS:
            out[column] = conn.execute(f"SELECT id, {column}::text FROM all_types ORDER BY id").fetchall()
        out["c_json as jsonb"] = conn.execute("SELECT id, c_json::jsonb::text FROM all_types ORDER BY id").fetchall()
        row = ", ".join("c_json::jsonb" if c == "c_json" else c for c in COLUMNS)
        out["whole row"] = conn.execute(f"SELECT id, md5(ROW({row})::text) FROM all_types ORDER BY id").fetchall()
        return out


def pipeline_node(path, source: str, target: str, tables: list[str], name: str = "types"):
    return write_node(path / f"{name}.yaml", {"src": source, "dst": target}, [{
        "name": name,
        "source": {"database": "src", "capture": "trigger", "tables": tables},
        "target": {"database": "dst"},
    }])


def assert_same(source: dict, target: dict) -> None:
    assert source.keys() == target.keys()
    problems = []
    for column in source:
        if source[column] != target[column]:
            diffs = [(s, t) for s, t in itertools.zip_longest(source[column], target[column]) if s != t]
            shown = [(s[0] if s else None, _short(s), _short(t)) for s, t in diffs[:5]]
            problems.append(f"column {column} differs in {len(diffs)} rows, e.g. (id, source, target): {shown}")
    if problems:
        pytest.fail("\n".join(problems))


def _short(row):
    if row is None:
        return None
    text = row[1]
    return text if text is None or len(text) < 200 else text[:80] + f"…({len(text)} chars)"


def assert_json_column(source: list[tuple], target: list[tuple]) -> None:
    assert [r[0] for r in source] == [r[0] for r in target]
    for (row_id, text), (_, copied) in zip(source, target):
        assert copied == JSON_NORMALISED.get(row_id, text), f"json of row {row_id}"


def test_postgres_to_postgres_every_type_exact(tmp_path, pg_databases):
    county, city = pg_databases
    pg_exec(county, TABLE_DDL)
    pg_exec(city, TABLE_DDL)
    config = pipeline_node(tmp_path, county, city, ["public.all_types"])
    cli("triggers", "install", "--config", str(config), "--pipeline", "types")

    insert_rows(county, ROWS + JSON_ROWS)
    pg_exec(county, *SQL_ROWS)
    insert_rows(county, NEW_YORK_ROWS, "SET TIME ZONE 'America/New_York'")
    pg_exec(county, "SET TIME ZONE 'America/New_York'", *NEW_YORK_SQL)
    # a writer with other output settings: the row images it captures must mean the same values
    pg_exec(county, "SET IntervalStyle = 'sql_standard'", "SET bytea_output = 'escape'", "SET DateStyle = 'SQL, DMY'",
            "SET TIME ZONE 'Pacific/Chatham'", OTHER_SESSION_SQL[0])
    pg_exec(county, "SET IntervalStyle = 'iso_8601'", OTHER_SESSION_SQL[1])
    pg_exec(county, *UPDATES)
    run_once(config)

    assert pg_rows(city, "SELECT count(*) FROM tiersync.tiersync_dead_letter") == [(0,)]
    assert pg_rows(county, "SELECT count(*) FROM tiersync.tiersync_change_log") == [(0,)]
    ids = [r[0] for r in pg_rows(county, "SELECT id FROM all_types ORDER BY id")]
    assert ids == [1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]
    for zone in ("Asia/Shanghai", "UTC", "America/New_York"):
        source, target = compared_rows(county, zone), compared_rows(city, zone)
        assert_json_column(source.pop("c_json"), target.pop("c_json"))
        assert_same(source, target)
    # the comparison really covers the interesting values
    assert pg_rows(city, "SELECT c_double::text, c_real::text, c_jsonb::text FROM all_types WHERE id = 1") == [
        ("1e-308", "0.1", '{"a": 1, "b": [1.10, "两", {"c": 12345678901234567890}]}')]
    assert pg_rows(city, "SELECT c_double::text FROM all_types WHERE id = 10") == [("0.30000000000000004",)]
    assert pg_rows(city, "SELECT c_bytea = %s, length(c_text) FROM all_types WHERE id = 3", [ALL_BYTES]) == [
        (True, 1000)]
    assert pg_rows(city, "SELECT length(c_text) FROM all_types WHERE id = 5") == [(len(BIG_TEXT) + 1,)]
    assert pg_rows(city, "SELECT c_double::text, c_real::text, c_json::text FROM all_types WHERE id = 8") == [
        ("-0", "-0", "-0")]
    assert pg_rows(city, "SELECT length(c_numeric_free::text) FROM all_types WHERE id = 15") == [(10001,)]
    with psycopg.connect(city, autocommit=True) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        assert conn.execute("SELECT c_timestamptz::text FROM all_types WHERE id IN (10, 11) ORDER BY id").fetchall() \
            == [("2024-03-10 07:30:00+00",), ("2024-11-03 06:30:00+00",)]  # New York wall times (ambiguous: EST)


def test_float_digits_do_not_depend_on_the_writers_session(tmp_path, pg_databases):
    county, city = pg_databases
    ddl = "CREATE TABLE public.floats (id integer PRIMARY KEY, d double precision, r real)"
    pg_exec(county, ddl)
    pg_exec(city, ddl)
    config = pipeline_node(tmp_path, county, city, ["public.floats"])
    cli("triggers", "install", "--config", str(config), "--pipeline", "types")
    pg_exec(county, "SET extra_float_digits = 0",
            "INSERT INTO floats VALUES (1, 0.1::float8 + 0.2::float8, 0.1::real + 0.2::real)")
    run_once(config)
    query = "SELECT id, d::text, r::text FROM floats ORDER BY id"
    assert pg_rows(city, query) == pg_rows(county, query) == [(1, "0.30000000000000004", "0.3")]


# ---------------------------------------------------------------------------------------------------------------
# (a') the same path, property-based: random batches of values through the real engine and a real PostgreSQL

PROPERTY_COLUMNS = {
    "t": "text", "ta": "text[]", "n": "numeric(20,6)", "nf": "numeric", "d": "double precision", "r": "real",
    "b": "bytea", "j": "jsonb", "js": "json", "ts": "timestamptz", "i": "bigint",
}
PROPERTY_DDL = ("CREATE TABLE public.prop (id integer PRIMARY KEY, "
                + ", ".join(f"{c} {t}" for c, t in PROPERTY_COLUMNS.items()) + ")")

_ids = itertools.count(1)

unicode_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40) | \
    st.sampled_from(["", "NULL", "\\N", "\\", "\t\n\r", '"', "{a,b}", " 😀𠀀中文 ", "\U0010ffff", "\u2028"])
numeric_20_6 = st.decimals(min_value=Decimal("-99999999999999.999999"), max_value=Decimal("99999999999999.999999"),
                           places=6, allow_nan=False) | st.just(Decimal("NaN"))
free_numeric = st.builds(lambda digits, scale: Decimal(digits).scaleb(-scale),
                         st.integers(-(10 ** 45), 10 ** 45), st.integers(-20, 40))
json_docs = st.recursive(
    st.none() | st.booleans() | st.integers(-(10 ** 30), 10 ** 30) | unicode_text
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(unicode_text, children, max_size=4),
    max_leaves=12)
zones = st.sampled_from([timezone.utc, timezone(timedelta(hours=8)), timezone(timedelta(hours=-9, minutes=-30)),
                         timezone(timedelta(hours=5, minutes=45))])
row_values = st.fixed_dictionaries({
    "t": st.none() | unicode_text,
    "ta": st.none() | st.lists(st.none() | unicode_text, max_size=5),
    "n": st.none() | numeric_20_6,
    "nf": st.none() | free_numeric,
    "d": st.none() | st.floats(),
    "r": st.none() | st.floats(width=32),
    "b": st.none() | st.binary(max_size=64),
    "j": st.none() | json_docs,
    "ts": st.none() | st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=zones),
    "i": st.none() | st.integers(-(2 ** 63), 2 ** 63 - 1),
})


def _json_text(doc) -> str:
    return json.dumps(doc, ensure_ascii=False)


@pytest.fixture(scope="module")
def property_node(pg_server, tmp_path_factory):
    county = pg_server.create_database("prop_county")
    city = pg_server.create_database("prop_city")
    pg_exec(county, PROPERTY_DDL)
    pg_exec(city, PROPERTY_DDL)
    config = pipeline_node(tmp_path_factory.mktemp("prop"), county, city, ["public.prop"], name="prop")
    cli("triggers", "install", "--config", str(config), "--pipeline", "prop")
    return config, county, city


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batch=st.lists(row_values, min_size=1, max_size=8), changed=row_values)
def test_property_random_values_round_trip_exactly(property_node, batch, changed):
    config, county, city = property_node
    ids = [next(_ids) for _ in batch]
    columns = list(PROPERTY_COLUMNS)
    with psycopg.connect(county, autocommit=True) as conn:
        for row_id, row in zip(ids, batch):
            values = [Jsonb(row[c], dumps=_json_text) if c == "j" and row[c] is not None
                      else Json(row["j"], dumps=_json_text) if c == "js" and row["j"] is not None
                      else row["j" if c == "js" else c] for c in columns]
            marks = ", ".join(["%s"] * (len(columns) + 1))
            conn.execute(f"INSERT INTO prop (id, {', '.join(columns)}) VALUES ({marks})", [row_id, *values])
        # and one row changed afterwards: the update's image must be exact too
        conn.execute(f"UPDATE prop SET {', '.join(f'{c} = %s' for c in columns if c not in ('j', 'js'))} WHERE id = %s",
                     [changed[c] for c in columns if c not in ("j", "js")] + [ids[0]])
    run_once(config)
    # json as jsonb: its text layout is normalised (see JSON_NORMALISED), its document must be exact
    select = ("SELECT id, " + ", ".join(f"{c}::text" if c != "js" else "js::jsonb::text" for c in columns) + " "
              "FROM prop WHERE id = ANY(%s) ORDER BY id")
    for zone in ("UTC", "Asia/Shanghai"):
        rows = []
        for url in (county, city):
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f"SET TIME ZONE '{zone}'")
                rows.append(conn.execute(select, [ids]).fetchall())
        assert len(rows[0]) == len(ids)
        assert rows[1] == rows[0]


# ---------------------------------------------------------------------------------------------------------------
# (b) SQLite → PostgreSQL

SQLITE_DDL = """CREATE TABLE readings (
    id INTEGER PRIMARY KEY,
    c_int INTEGER, c_num NUMERIC(12,2), c_dec DECIMAL(12,2), c_dec_free DECIMAL, c_real REAL, c_text TEXT,
    c_bool BOOLEAN, c_date DATE, c_time TIME, c_datetime DATETIME, c_ts TIMESTAMP, c_tstz TIMESTAMP, c_blob BLOB,
    c_json JSON, c_uuid UUID, c_uuid_text TEXT)"""
SQLITE_TARGET_DDL = """CREATE TABLE public.readings (
    id bigint PRIMARY KEY,
    c_int bigint, c_num numeric(12,2), c_dec numeric(12,2), c_dec_free numeric, c_real double precision, c_text text,
    c_bool boolean, c_date date, c_time time, c_datetime timestamp, c_ts timestamptz, c_tstz timestamptz, c_blob bytea,
    c_json jsonb, c_uuid uuid, c_uuid_text uuid)"""
SQLITE_COLUMNS = ["c_int", "c_num", "c_dec", "c_dec_free", "c_real", "c_text", "c_bool", "c_date", "c_time",
                  "c_datetime", "c_ts", "c_tstz", "c_blob", "c_json", "c_uuid", "c_uuid_text"]

SQLITE_JSON = ('{"a": 1.10, "big": 12345678901234567890, "f": 0.30000000000000004, "s": "中文😀𠀀", '
               '"n": [1, -0, 1e+20, 0.1234567890123456789012345, -0.000001], "o": {}, "t": true, "z": null}')
SQLITE_ROWS = [
    {"id": 1, "c_int": 42, "c_num": 12.34, "c_dec": "12.34", "c_dec_free": 12.34, "c_real": 0.1 + 0.2,
     "c_text": "北京市 😀 𠀀 tab\t newline\n 'q' \"dq\" \\", "c_bool": True, "c_date": "2024-02-29",
     "c_time": "04:05:06.789", "c_datetime": "2024-02-29 23:59:59.999999", "c_ts": "2024-02-29 23:59:59.999999",
     "c_tstz": "2024-02-29T23:59:59.999999+08:00", "c_blob": ALL_BYTES, "c_json": SQLITE_JSON,
     "c_uuid": "12345678-1234-5678-1234-567812345678", "c_uuid_text": "ABCDEF01-2345-6789-ABCD-EF0123456789"},
    {"id": 2, "c_int": -(2 ** 63), "c_num": -9999999999.99, "c_dec": 9999999999.99,
     "c_dec_free": "12345678901234567890.123456789", "c_real": 1.7976931348623157e308, "c_text": "",
     "c_bool": False, "c_date": "0001-01-01", "c_time": "00:00:00", "c_datetime": "0001-01-01T00:00:00",
     "c_ts": "9999-12-31 23:59:59.999999", "c_tstz": "0001-01-01 00:00:00+00:00", "c_blob": b"", "c_json": "[]",
     "c_uuid": "00000000-0000-0000-0000-000000000000", "c_uuid_text": "ffffffff-ffff-ffff-ffff-ffffffffffff"},
    {"id": 3},  # NULL in every non-key column
    {"id": 4, "c_int": 2 ** 63 - 1, "c_num": 0.1 + 0.2, "c_dec": 100, "c_dec_free": 1e-7, "c_real": 5e-324,
     "c_text": BIG_TEXT, "c_json": '"字符串"', "c_ts": "2024-06-01 12:00:00-04:00", "c_tstz": "2024-06-01 12:00:00"},
    {"id": 5, "c_real": math.inf, "c_dec_free": 1e22, "c_json": "12345678901234567890.5e3"},
    {"id": 6, "c_real": -math.inf, "c_dec_free": 123456789.12345679, "c_json": "-0"},
    {"id": 7, "c_text": "to be deleted", "c_blob": ALL_BYTES},
]
# doubles that need all 17 significant digits, and ones SQLite's own printf gets wrong at 17 digits
FLOATS = [0.1 + 0.2, 1 / 3, 2 / 3, math.pi, math.e, 1.0000000000000002, 0.1, 1e-7, 1e16, 123456789012345680.0,
          2.2250738585072014e-308, 2.225073858507201e-308, 1e22, 1.2345678901234567e-300, 100.0, 9007199254740993.0,
          -1.1352904205810249e-307, 3.2932178885048086e-302, -2.2606631148481385e-299, 8.228927346002939e-297,
          -2.3738950689163862e-11, 1.7976931348623155e308]
SQLITE_UPDATES = [
    "UPDATE readings SET c_real = 0.1, c_text = c_text || ' 更新', c_bool = 0, c_num = '56.78' WHERE id = 1",
    "UPDATE readings SET c_blob = x'00ff', c_int = c_int + 1 WHERE id = 2",
    "UPDATE readings SET c_text = c_text || '!' WHERE id = 4",
    "DELETE FROM readings WHERE id = 7",
]


def _bits(value: float) -> bytes:
    import struct

    return struct.pack(">d", value)


def _expected_decimal(value, places: str | None) -> Decimal:
    from decimal import ROUND_HALF_UP

    number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    return number.quantize(Decimal(places), rounding=ROUND_HALF_UP) if places else number


def test_sqlite_to_postgres_every_type_exact(tmp_path, pg_databases):
    _, city = pg_databases
    path = tmp_path / "county.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(SQLITE_DDL)
    pg_exec(city, SQLITE_TARGET_DDL)
    config = write_node(tmp_path / "node.yaml", {"src": f"sqlite:///{path}", "dst": city}, [{
        "name": "readings-up",
        "source": {"database": "src", "capture": "trigger", "tables": ["readings"]},
        "target": {"database": "dst"},
    }])
    assert f"sqlite:////{str(path).lstrip('/')}" in config.read_text()  # four slashes: an absolute path
    cli("triggers", "install", "--config", str(config), "--pipeline", "readings-up")

    for row in SQLITE_ROWS:
        marks = ", ".join("?" for _ in row)
        db.execute(f"INSERT INTO readings ({', '.join(row)}) VALUES ({marks})", list(row.values()))
    db.executemany("INSERT INTO readings (id, c_real, c_dec_free) VALUES (?, ?, ?)",
                   [(100 + i, v, v) for i, v in enumerate(FLOATS)])
    for statement in SQLITE_UPDATES:
        db.execute(statement)
    run_once(config)

    assert pg_rows(city, "SELECT count(*) FROM tiersync.tiersync_dead_letter") == [(0,)]
    source = {r[0]: dict(zip(SQLITE_COLUMNS, r[1:]))
              for r in db.execute(f"SELECT id, {', '.join(SQLITE_COLUMNS)} FROM readings ORDER BY id")}
    db.close()
    with psycopg.connect(city, autocommit=True) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        target = {r[0]: dict(zip(SQLITE_COLUMNS, r[1:])) for r in conn.execute(
            f"SELECT id, {', '.join(SQLITE_COLUMNS)} FROM readings ORDER BY id")}
        texts = {r[0]: r[1:] for r in conn.execute(
            "SELECT id, c_num::text, c_dec::text, c_dec_free::text, c_ts::text, c_tstz::text FROM readings")}
        # the JSON documents, as PostgreSQL's jsonb reads what SQLite holds. A column declared JSON has NUMERIC
        # affinity: SQLite itself stores a document that is a bare number as INTEGER or REAL (asserted below)
        json_of = {i: conn.execute("SELECT %s::jsonb::text", [
            s["c_json"] if isinstance(s["c_json"], str) else json.dumps(s["c_json"])]).fetchone()[0]
            for i, s in source.items() if s["c_json"] is not None}
        copied_json = dict(conn.execute("SELECT id, c_json::text FROM readings WHERE c_json IS NOT NULL").fetchall())
    assert sorted(target) == sorted(source) and 7 not in target

    for row_id, src in source.items():
        dst = target[row_id]
        where = f"row {row_id}"
        for column in ("c_int", "c_text", "c_blob"):
            assert dst[column] == src[column], f"{where} {column}"
        if src["c_blob"] is not None:
            assert isinstance(dst["c_blob"], bytes)
        assert dst["c_bool"] == (None if src["c_bool"] is None else bool(src["c_bool"])), where
        # decimals: SQLite holds 12.34 as a double; it arrives as 12.34, not 12.3399999999999998578914528…
        for column, places in (("c_num", "0.01"), ("c_dec", "0.01"), ("c_dec_free", None)):
            expected = None if src[column] is None else _expected_decimal(src[column], places)
            assert dst[column] == expected, f"{where} {column}"
        num_text, dec_text, dec_free_text, ts_text, tstz_text = texts[row_id]
        assert num_text == (None if src["c_num"] is None else str(_expected_decimal(src["c_num"], "0.01")))
        assert dec_free_text == (None if src["c_dec_free"] is None
                                 else format(_expected_decimal(src["c_dec_free"], None), "f")), where
        # floats: the very same double, bit for bit
        if src["c_real"] is None:
            assert dst["c_real"] is None, where
        else:
            assert _bits(dst["c_real"]) == _bits(src["c_real"]), f"{where}: {dst['c_real']!r} != {src['c_real']!r}"
        assert dst["c_date"] == (None if src["c_date"] is None else date.fromisoformat(src["c_date"])), where
        assert dst["c_time"] == (None if src["c_time"] is None else time.fromisoformat(src["c_time"])), where
        assert dst["c_datetime"] == (None if src["c_datetime"] is None
                                     else datetime.fromisoformat(src["c_datetime"])), where
        # timestamptz from SQLite text: a naive value means UTC, a value with an offset keeps its instant
        for column, text in (("c_ts", ts_text), ("c_tstz", tstz_text)):
            if src[column] is None:
                assert dst[column] is None and text is None, where
                continue
            moment = datetime.fromisoformat(src[column])
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
                assert text == src[column].replace("T", " ") + "+00", f"{where} {column}: naive is UTC"
            assert dst[column] == moment, f"{where} {column}"
        assert dst["c_uuid"] == (None if src["c_uuid"] is None else UUID(src["c_uuid"])), where
        assert dst["c_uuid_text"] == (None if src["c_uuid_text"] is None else UUID(src["c_uuid_text"])), where
        assert copied_json.get(row_id) == json_of.get(row_id), f"{where} c_json"

    # spot checks that the comparison above covers what it should
    assert texts[1][:3] == ("56.78", "12.34", "12.34")
    assert texts[4][:3] == ("0.30", "100.00", "0.0000001")
    assert texts[5][2] == "10000000000000000000000" and texts[6][2] == "123456789.12345679"
    assert target[1]["c_real"] == 0.1 and target[4]["c_real"] == 5e-324 and target[5]["c_real"] == math.inf
    assert target[2]["c_real"] == 1.7976931348623157e308 and target[101]["c_real"] == 1 / 3
    assert texts[4][3:] == ("2024-06-01 16:00:00+00", "2024-06-01 12:00:00+00")
    assert source[5]["c_json"] == 1.2345678901234568e22 and source[6]["c_json"] == 0  # SQLite's affinity
    assert copied_json[5] == "12345678901234568000000" and copied_json[4] == '"字符串"'
    assert copied_json[1] == ('{"a": 1.10, "f": 0.30000000000000004, "n": [1, 0, 100000000000000000000, '
                              '0.1234567890123456789012345, -0.000001], "o": {}, "s": "中文😀𠀀", "t": true, '
                              '"z": null, "big": 12345678901234567890}')


def test_sqlite_negative_zero_is_lost_by_sqlite_itself(tmp_path):
    """KNOWN LIMITATION of SQLite, not of tiersync: a REAL column stores -0.0 as 0.0, so there is no sign left to
    capture (PostgreSQL → PostgreSQL keeps -0, see row 8 above). This pins the SQLite behaviour down."""
    db = sqlite3.connect(tmp_path / "z.db")
    db.execute("CREATE TABLE z (r REAL)")
    db.execute("INSERT INTO z VALUES (?)", (-0.0,))
    assert math.copysign(1, db.execute("SELECT r FROM z").fetchone()[0]) == 1.0
