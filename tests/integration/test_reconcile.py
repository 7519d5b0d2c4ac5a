"""tiersync reconcile: planted drift of every kind found exactly, through a mapping with renames; repair; fencing."""

from __future__ import annotations

import json
import sqlite3

import psycopg
import pytest

from tests.helpers import cli, pg_exec, pg_rows, run_once, write_node
from tests.reconcile_helpers import assert_no_false_drift_while_writing, keys, reconcile

SOURCE_DDL = """CREATE TABLE item (
    id integer PRIMARY KEY, label text, price numeric(12,2), ratio double precision, active boolean,
    seen timestamptz, born date, doc jsonb, raw bytea, qty integer)"""
TARGET_DDL = """CREATE TABLE item_copy (
    id integer PRIMARY KEY, title text, amount numeric, ratio double precision, active boolean,
    seen timestamptz, born date, doc jsonb, raw bytea, qty_text text)"""
FILL = """INSERT INTO item SELECT g, CASE WHEN g % 3 = 0 THEN '北京 ' || g ELSE 'row ' || g END, g * 1.25,
    g * 0.1, g % 2 = 0, timestamptz '2024-03-01 12:00:00+08' + g * interval '1 minute 1.5 second',
    date '2020-01-01' + g, jsonb_build_object('n', g, 'tags', jsonb_build_array('a', g)), decode(md5(g::text), 'hex'),
    g % 7 FROM generate_series(1, 3000) g"""
MAPPING = {"source": "item", "target": "item_copy",
           "columns": {"label": "title", "price": "amount", "qty": {"to": "qty_text", "cast": "text"}}}




@pytest.fixture
def pg_pair(tmp_path, pg_databases):
    source, target = pg_databases
    pg_exec(source, SOURCE_DDL, FILL)
    pg_exec(target, TARGET_DDL)
    config = write_node(tmp_path / "node.yaml", {"src": source, "dst": target}, [{
        "name": "p", "source": {"database": "src", "tables": ["item"]}, "target": {"database": "dst"},
        "poll_interval": 0.05, "mappings": [MAPPING]}])
    cli("snapshot", "--config", str(config), "--pipeline", "p")
    return config, source, target


# drift planted in the target, with the key and the columns each one must be reported with
PLANTED = [
    ("UPDATE item_copy SET title = 'edited' WHERE id = 20", 20, ["title"]),
    ("UPDATE item_copy SET title = '' WHERE id = 21", 21, ["title"]),  # source NULL (set below), target ''
    ("UPDATE item_copy SET title = title || ' ' WHERE id = 22", 22, ["title"]),  # a trailing space
    ("UPDATE item_copy SET amount = amount + 0.01 WHERE id = 23", 23, ["amount"]),
    ("UPDATE item_copy SET ratio = 0.3 WHERE id = 24", 24, ["ratio"]),  # source holds 0.1 + 0.2
    ("UPDATE item_copy SET active = NOT active WHERE id = 25", 25, ["active"]),
    ("UPDATE item_copy SET seen = seen + interval '1 microsecond' WHERE id = 26", 26, ["seen"]),
    ("UPDATE item_copy SET doc = jsonb_set(doc, '{n}', '0') WHERE id = 27", 27, ["doc"]),
    ("UPDATE item_copy SET raw = '\\x00' WHERE id = 28", 28, ["raw"]),
    ("UPDATE item_copy SET title = '北京 30' WHERE id = 30", 30, ["title"]),  # source: 北京 30 → 北京市 30
    # a cast column is checked in Python, on the rows of buckets that differ in the pushed-down columns
    ("UPDATE item_copy SET qty_text = '99', active = NOT active WHERE id = 31", 31, ["active", "qty_text"]),
    ("UPDATE item_copy SET born = NULL WHERE id = 32", 32, ["born"]),
]
# equal values written differently: never reported
EQUAL = ["UPDATE item_copy SET amount = 41.2500 WHERE id = 33",  # 41.25 at the source
         "UPDATE item_copy SET seen = (seen AT TIME ZONE 'America/New_York') AT TIME ZONE 'America/New_York' "
         "WHERE id = 34",
         "UPDATE item_copy SET doc = '{\"tags\": [\"a\", 35], \"n\": 35}' WHERE id = 35"]


def test_pg_to_pg_equal_then_every_planted_drift_found_exactly_and_repaired(pg_pair, tmp_path):
    config, source, target = pg_pair
    report = reconcile(config, expect=0)
    assert (report["missing"], report["extra"], report["different"], report["in_flight"]) == (0, 0, 0, 0)
    pg_exec(source, "UPDATE item SET label = NULL WHERE id = 21",
            "UPDATE item SET ratio = 0.1::float8 + 0.2 WHERE id = 24",
            "UPDATE item SET label = '北京市 30' WHERE id = 30")
    pg_exec(target, "UPDATE item_copy SET title = NULL WHERE id = 21",
            "UPDATE item_copy SET ratio = 0.1::float8 + 0.2 WHERE id = 24",
            "UPDATE item_copy SET title = '北京市 30' WHERE id = 30")
    assert reconcile(config, expect=0)["different"] == 0
    pg_exec(target, *[sql for sql, _, _ in PLANTED], *EQUAL,
            "DELETE FROM item_copy WHERE id IN (10, 11, 2999)",
            "INSERT INTO item_copy (id, title) VALUES (5000, 'stray'), (5001, NULL)")
    keys_file = tmp_path / "keys.json"
    report = reconcile(config, "--keys-file", str(keys_file), expect=1)
    assert keys(report, "missing") == [10, 11, 2999]
    assert keys(report, "extra") == [5000, 5001]
    assert keys(report, "different") == sorted(k for _, k, _ in PLANTED)
    assert report["in_flight"] == 0
    [table] = report["tables"]
    for _, key, columns in PLANTED:
        assert table["different_columns"][json.dumps([key])] == columns, key
    assert sorted(k[0] for k in json.loads(keys_file.read_text())["missing"]) == ["public.item"] * 3
    # a dry run changes nothing; a repair goes through the apply path and the table is verified again
    assert reconcile(config, "--repair", "--dry-run", expect=1)["tables"][0]["repair"]["would_repair"] == 17
    report = reconcile(config, "--repair", expect=0)
    assert report["tables"][0]["repair"]["upserted"] == 15
    assert report["tables"][0]["repair"]["deleted"] == 2
    assert reconcile(config, expect=0)["different"] == 0
    assert pg_rows(source, "SELECT id, label, price, ratio, seen, doc FROM item ORDER BY id") == \
        pg_rows(target, "SELECT id, title, amount, ratio, seen, doc FROM item_copy ORDER BY id")


def test_repair_limits_no_delete_and_where(pg_pair):
    config, source, target = pg_pair
    pg_exec(target, "UPDATE item_copy SET title = 'x' WHERE id <= 30", "INSERT INTO item_copy (id) VALUES (9000)")
    report = reconcile(config, "--where", "id <= 100", expect=1)
    assert (report["different"], report["extra"]) == (30, 0)  # 9000 is outside the condition
    report = reconcile(config, "--repair", "--max-repair", "10", "--no-delete", expect=1)
    assert report["tables"][0]["repair"]["upserted"] == 10
    assert (report["different"], report["extra"]) == (20, 1)
    report = reconcile(config, "--repair", "--no-delete", expect=1)
    assert (report["different"], report["extra"]) == (0, 1)
    reconcile(config, "--repair", expect=0)


def test_large_drift_recommends_and_performs_a_reload(pg_pair):
    config, source, target = pg_pair
    pg_exec(target, "UPDATE item_copy SET title = 'x' WHERE id % 2 = 0")
    report = reconcile(config, expect=1)
    assert report["different"] == 1500 and "re-load" in report["tables"][0]["recommendation"]
    text = cli("reconcile", "--config", str(config), "--pipeline", "p", "--show", "3", expect=1).output
    assert "missing 0, extra 0, different 1500, in flight 0" in text
    assert "different: [2], [4], [6] … and 1497 more" in text and "columns that differ: title (1500)" in text
    assert "recommendation:" in text
    assert text.rstrip().endswith("DRIFTED: missing 0, extra 0, different 1500, in flight 0")
    report = reconcile(config, "--repair", "--reload-threshold", "0.3", expect=0)
    assert report["tables"][0]["repair"]["reload"] is True
    assert cli("reconcile", "--config", str(config), "--pipeline", "p").output.rstrip().endswith(
        "equal: missing 0, extra 0, different 0, in flight 0")


def test_bad_input_exits_2_with_a_clear_message(pg_pair):
    config, source, target = pg_pair
    result = cli("reconcile", "--config", str(config), "--pipeline", "p", "--table", "nope", expect=2)
    assert "does not capture public.nope" in result.output
    result = cli("reconcile", "--config", str(config), "--pipeline", "p", "--where", "id = = 3", expect=2)
    assert "reconcile failed" in result.output and "syntax error" in result.output
    result = cli("reconcile", "--config", str(config), "--pipeline", "nope", expect=2)
    assert "no pipeline named 'nope'" in result.output


def test_no_false_drift_while_replication_runs(pg_pair):
    config, source, target = pg_pair
    cli("triggers", "install", "--config", str(config), "--pipeline", "p")

    def write(stop):
        with psycopg.connect(source, autocommit=True) as conn:
            i = 0
            while not stop.is_set():
                i += 1
                conn.execute("UPDATE item SET price = price + 1, label = label || '.' WHERE id = %s",
                             (i * 37 % 3000 + 1,))
                if i % 10 == 0:
                    conn.execute("DELETE FROM item WHERE id = %s", (i * 101 % 3000 + 1,))
                conn.execute("INSERT INTO item (id, label) VALUES (%s, 'new') ON CONFLICT DO NOTHING", (10000 + i,))
                stop.wait(0.002)

    assert_no_false_drift_while_writing(config, target, write)


SQLITE_DDL = """CREATE TABLE item (id INTEGER PRIMARY KEY, label TEXT, price NUMERIC, ratio REAL, active BOOLEAN,
    seen TIMESTAMP, born DATE, doc JSON, raw BLOB, qty INTEGER)"""


def test_sqlite_to_pg_across_engines(tmp_path, pg_databases):
    path = tmp_path / "county.db"
    with sqlite3.connect(path) as conn:
        conn.execute(SQLITE_DDL)
        conn.executemany("INSERT INTO item VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [
            (i, None if i == 5 else ("" if i == 6 else f"第{i}项 "), f"{i}.50", i * 0.1 + 0.2, i % 2,
             f"2024-03-01T{i % 24:02d}:00:00+08:00" if i % 2 else f"2024-03-01 {i % 24:02d}:00:00.25",
             f"2021-02-{1 + i % 28:02d}", json.dumps({"b": [i, 1.5], "a": "中"}), bytes([i % 256, 0]), i)
            for i in range(1, 1201)])
    _, target = pg_databases
    pg_exec(target, TARGET_DDL)
    config = write_node(tmp_path / "node.yaml", {"src": f"sqlite:///{path}", "dst": target}, [{
        "name": "p", "source": {"database": "src", "tables": ["item"]}, "target": {"database": "dst"},
        "mappings": [MAPPING]}])
    cli("snapshot", "--config", str(config), "--pipeline", "p")
    report = reconcile(config, expect=0)
    assert (report["missing"], report["extra"], report["different"], report["in_flight"]) == (0, 0, 0, 0)
    with sqlite3.connect(path) as conn:  # equal instants written in other zones: not drift
        conn.execute("UPDATE item SET seen = '2024-03-01T03:00:00+00:00' WHERE id = 11")  # was 11:00+08:00
        conn.execute("UPDATE item SET price = 7.5 WHERE id = 7")  # was '7.50'
    pg_exec(target, "UPDATE item_copy SET title = NULL WHERE id = 6",  # '' at the source
            "UPDATE item_copy SET title = rtrim(title) WHERE id = 8",
            "UPDATE item_copy SET ratio = 0.30000000000000004 WHERE id = 1",  # 1 * 0.1 + 0.2 is exactly that: equal
            "UPDATE item_copy SET ratio = 0.3 WHERE id = 2",
            "UPDATE item_copy SET seen = seen + interval '1 hour' WHERE id = 13",
            "UPDATE item_copy SET doc = '{\"a\": \"中\", \"b\": [14, 1.50]}' WHERE id = 14",
            "DELETE FROM item_copy WHERE id = 15", "INSERT INTO item_copy (id) VALUES (7777)")
    report = reconcile(config, expect=1)
    assert keys(report, "different") == [2, 6, 8, 13, 14], report
    assert keys(report, "missing") == [15] and keys(report, "extra") == [7777]
    assert report["in_flight"] == 0
    reconcile(config, "--repair", expect=0)


def test_postgres_normalisation_sql_agrees_with_the_reference(pg_databases):
    """Each column normalised by PostgreSQL equals engine.reconcile.normalise of the value tiersync reads."""
    from connectors.postgres import dialect
    from connectors.postgres.connector import PostgresConnector
    from engine.event import TableId
    from engine.reconcile import normalise
    from engine.seams import CapturedTable

    source, _ = pg_databases
    columns = {"i": "bigint", "n": "numeric", "f": "double precision", "r": "real", "b": "boolean",
               "tz": "timestamptz", "ts": "timestamp", "d": "date", "tm": "time", "j": "jsonb", "js": "json",
               "by": "bytea", "tx": "text", "vc": "varchar(10)"}
    pg_exec(source, "CREATE TABLE v (id int PRIMARY KEY, " + ", ".join(f"{c} {t}" for c, t in columns.items()) + ")",
            """INSERT INTO v VALUES
            (1, -9223372036854775808, 1.500, 0.1::float8 + 0.2, 1.1, true, '2024-03-01 08:00:00.25+08',
             '2024-03-01 00:00:00.000001', '0999-01-01', '23:59:59.5', '{"b": [1, 1.10, "中"], "a": null}',
             '{"z": 1, "long": {"x": -0.0}}', '\\x00ff', 'a,b\\c ', 'x'),
            (2, 0, -0.00, '-0', '-Infinity', false, 'infinity', '-infinity', '2024-02-29', '00:00:00',
             '[]', '"s"', '\\x', '', ''),
            (3, NULL, 'NaN', 'NaN', 1e-40, NULL, '1970-01-01 00:00:00+00', '2000-01-01 12:00:00', NULL, NULL,
             '1e2', '[1e2, 0.5]', NULL, NULL, NULL),
            (4, 42, 12345678901234567890.123456789, 1e300, 3.4e38, true, '2024-12-31 23:59:59.999999-12',
             '1900-01-01', '2400-01-01', '12:00:00.000001', '{"k": "\\"quoted\\"\\n"}', '{}', '\\xdeadbeef',
             '北京 ', '中文')""")
    connector = PostgresConnector(source)
    info = connector.describe(TableId("public", "v"))
    types = {c: info.column(c).type for c in columns}  # as the catalog names them
    select = ", ".join(dialect.normalised_sql(f"v.{c}", t, connector.column_kind(t)) for c, t in types.items())
    with psycopg.connect(source, autocommit=True) as conn:
        for statement in dialect.CHECKSUM_SESSION_SQL:
            conn.execute(statement)
        in_sql = {r[0]: r[1:] for r in conn.execute(f"SELECT id, {select} FROM v").fetchall()}
    scanner = connector.table_scanner(CapturedTable(info, ("id",)))
    try:
        rows = scanner.rows([(1,), (2,), (3,), (4,)])
    finally:
        scanner.close()
    assert len(rows) == 4
    for row in rows:
        expected = tuple(normalise(connector.column_kind(t), row[c]) for c, t in types.items())
        assert in_sql[row["id"]] == expected, row


def test_since_checkpoint_checks_only_changed_keys_and_history_records_runs(pg_pair):
    config, source, target = pg_pair
    cli("triggers", "install", "--config", str(config), "--pipeline", "p")
    run_once(config)
    first = reconcile(config, "--since-checkpoint", expect=0)  # the first incremental run is a full sweep
    assert first["tables"][0]["checked_keys"] is None and first["verified_position"]
    pg_exec(source, "UPDATE item SET qty = qty + 1 WHERE id IN (5, 6)", "DELETE FROM item WHERE id = 8")
    run_once(config)
    pg_exec(target, "UPDATE item_copy SET title = 'hand edit' WHERE id IN (5, 7)",  # 7 did not change at the source
            "INSERT INTO item_copy (id) VALUES (8)")  # deleted at the source, back in the target
    report = reconcile(config, "--since-checkpoint", expect=1)
    assert report["tables"][0]["checked_keys"] == 3
    assert keys(report, "different") == [5] and keys(report, "extra") == [8]
    # drift found: the position is not advanced, so the same keys are checked again next time
    report = reconcile(config, "--since-checkpoint", "--repair", expect=0)
    assert report["tables"][0]["checked_keys"] == 3 and report["verified_position"]
    report = reconcile(config, "--since-checkpoint", expect=0)
    assert report["tables"][0]["checked_keys"] == 0
    assert keys(reconcile(config, expect=1), "different") == [7]  # the full sweep still sees the rest
    # the verify consumer's changes are purged once verified: the change log does not grow
    assert pg_rows(source, "SELECT count(*) FROM tiersync.tiersync_change_log")[0][0] == 0
    history = cli("reconcile", "history", "--config", str(config), "--pipeline", "p").output
    lines = history.strip().splitlines()
    assert len(lines) == 1 + 5, history
    assert lines[1].split()[4:6] == ["full", "drifted"]  # newest first
    assert "since-checkpoint" in lines[3] and "repaired" in lines[3] and '"upserted": 1' in lines[3]
    runs = json.loads(cli("reconcile", "history", "--config", str(config), "--pipeline", "p", "--json").output)
    assert [r["result"] for r in runs] == ["drifted", "equal", "repaired", "drifted", "equal"]
    assert [r["mode"] for r in runs] == ["full"] + ["since-checkpoint"] * 3 + ["full"]
