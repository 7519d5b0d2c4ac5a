"""tiersync reconcile across engines with MariaDB: MariaDB → PostgreSQL and PostgreSQL → MariaDB through a mapping
with renames; planted drift of every kind found exactly, repair, history, fencing under a concurrent workload."""

from __future__ import annotations

import json

import pytest

from tests.helpers import cli, pg_exec, pg_rows, run_once, write_node
from tests.mysql_helpers import _connect, my_exec, my_rows
from tests.reconcile_helpers import assert_no_false_drift_while_writing, keys, reconcile

MARIA_SOURCE_DDL = """CREATE TABLE item (
    id INT PRIMARY KEY, label VARCHAR(100), price DECIMAL(12,2), ratio DOUBLE, active BOOLEAN,
    seen DATETIME(6), born DATE, raw VARBINARY(32), qty INT) DEFAULT CHARSET=utf8mb4"""
MARIA_FILL = """INSERT INTO item WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 3000)
    SELECT n, IF(n % 3 = 0, CONCAT('北京 ', n), CONCAT('row ', n)), n * 1.25, n * 0.1e0, n % 2 = 0,
    TIMESTAMP '2024-03-01 04:00:00' + INTERVAL n * 61500000 MICROSECOND, DATE '2020-01-01' + INTERVAL n DAY,
    UNHEX(MD5(n)), n % 7 FROM g"""
PG_TARGET_DDL = """CREATE TABLE item_copy (
    id integer PRIMARY KEY, title text, amount numeric, ratio double precision, active boolean,
    seen timestamptz, born date, raw bytea, quantity integer)"""
MAPPING = {"source": "item", "target": "item_copy",
           "columns": {"label": "title", "price": "amount", "qty": "quantity"}}

PG_SOURCE_DDL = """CREATE TABLE item (
    id integer PRIMARY KEY, label text, price numeric(12,2), ratio double precision, active boolean,
    seen timestamptz, born date, raw bytea, qty integer)"""
PG_FILL = """INSERT INTO item SELECT g, CASE WHEN g % 3 = 0 THEN '北京 ' || g ELSE 'row ' || g END, g * 1.25,
    g * 0.1, g % 2 = 0, timestamptz '2024-03-01 12:00:00+08' + g * interval '1 minute 1.5 second',
    date '2020-01-01' + g, decode(md5(g::text), 'hex'), g % 7 FROM generate_series(1, 3000) g"""
MARIA_TARGET_DDL = """CREATE TABLE item_copy (
    id INT PRIMARY KEY, title TEXT, amount DECIMAL(14,4), ratio DOUBLE, active BOOLEAN,
    seen TIMESTAMP(6) NULL, born DATE, raw VARBINARY(32), quantity INT) DEFAULT CHARSET=utf8mb4"""




@pytest.fixture
def maria_to_pg(tmp_path, maria_databases, pg_databases):
    source, target = maria_databases[0], pg_databases[1]
    my_exec(source, MARIA_SOURCE_DDL, "SET SESSION max_recursive_iterations = 10000", MARIA_FILL)
    pg_exec(target, PG_TARGET_DDL)
    config = write_node(tmp_path / "node.yaml", {"src": source, "dst": target}, [{
        "name": "p", "source": {"database": "src", "tables": ["item"]}, "target": {"database": "dst"},
        "poll_interval": 0.05, "mappings": [MAPPING]}])
    cli("snapshot", "--config", str(config), "--pipeline", "p")
    return config, source, target


@pytest.fixture
def pg_to_maria(tmp_path, maria_databases, pg_databases):
    source, target = pg_databases[0], maria_databases[1]
    pg_exec(source, PG_SOURCE_DDL, PG_FILL)
    my_exec(target, MARIA_TARGET_DDL)
    config = write_node(tmp_path / "node.yaml", {"src": source, "dst": target}, [{
        "name": "p", "source": {"database": "src", "tables": ["item"]}, "target": {"database": "dst"},
        "poll_interval": 0.05, "mappings": [MAPPING]}])
    cli("snapshot", "--config", str(config), "--pipeline", "p")
    return config, source, target


def _check_planted(config, planted, missing, extra):
    report = reconcile(config, expect=1)
    assert keys(report, "missing") == missing
    assert keys(report, "extra") == extra
    assert keys(report, "different") == sorted(k for _, k, _ in planted), report["keys"]["different"]
    assert report["in_flight"] == 0
    [table] = report["tables"]
    for _, key, columns in planted:
        assert table["different_columns"][json.dumps([key])] == columns, key
    assert reconcile(config, "--repair", "--dry-run", expect=1)["tables"][0]["repair"]["would_repair"] == \
        len(planted) + len(missing) + len(extra)
    report = reconcile(config, "--repair", expect=0)
    assert report["tables"][0]["repair"]["upserted"] == len(planted) + len(missing)
    assert report["tables"][0]["repair"]["deleted"] == len(extra)
    assert reconcile(config, expect=0)["different"] == 0


# drift planted in the PostgreSQL target of a MariaDB source: (statement, key, columns reported)
PLANTED_IN_PG = [
    ("UPDATE item_copy SET title = 'edited' WHERE id = 20", 20, ["title"]),
    ("UPDATE item_copy SET title = '' WHERE id = 21", 21, ["title"]),  # source NULL (set below), target ''
    ("UPDATE item_copy SET title = title || ' ' WHERE id = 22", 22, ["title"]),  # a trailing space
    ("UPDATE item_copy SET amount = amount + 0.01 WHERE id = 23", 23, ["amount"]),
    ("UPDATE item_copy SET ratio = 0.3 WHERE id = 24", 24, ["ratio"]),  # source holds 0.1 + 0.2
    ("UPDATE item_copy SET active = NOT active WHERE id = 25", 25, ["active"]),
    ("UPDATE item_copy SET seen = seen + interval '1 microsecond' WHERE id = 26", 26, ["seen"]),
    ("UPDATE item_copy SET quantity = quantity + 1 WHERE id = 27", 27, ["quantity"]),
    ("UPDATE item_copy SET raw = '\\x00' WHERE id = 28", 28, ["raw"]),
    ("UPDATE item_copy SET title = '北京 30' WHERE id = 30", 30, ["title"]),  # source: 北京市 30
    ("UPDATE item_copy SET born = NULL WHERE id = 32", 32, ["born"]),
]
EQUAL_IN_PG = ["UPDATE item_copy SET amount = 41.2500 WHERE id = 33",  # 41.25 at the source
               # the same instant written in another zone
               "UPDATE item_copy SET seen = (to_char(seen AT TIME ZONE 'Asia/Shanghai', 'YYYY-MM-DD HH24:MI:SS.US')"
               " || '+08')::timestamptz WHERE id = 34"]


def test_mariadb_to_pg_planted_drift_found_exactly_and_repaired(maria_to_pg):
    config, source, target = maria_to_pg
    assert reconcile(config, expect=0)["different"] == 0
    my_exec(source, "UPDATE item SET label = NULL WHERE id = 21", "UPDATE item SET ratio = 0.1e0 + 0.2e0 WHERE id = 24",
            "UPDATE item SET label = '北京市 30' WHERE id = 30")
    pg_exec(target, "UPDATE item_copy SET title = NULL WHERE id = 21",
            "UPDATE item_copy SET ratio = 0.1::float8 + 0.2 WHERE id = 24",
            "UPDATE item_copy SET title = '北京市 30' WHERE id = 30")
    assert reconcile(config, expect=0)["different"] == 0  # 0.1 + 0.2 equal on both engines, NULL = NULL
    pg_exec(target, *[sql for sql, _, _ in PLANTED_IN_PG], *EQUAL_IN_PG,
            "DELETE FROM item_copy WHERE id IN (10, 11, 2999)",
            "INSERT INTO item_copy (id, title) VALUES (5000, 'stray'), (5001, NULL)")
    _check_planted(config, PLANTED_IN_PG, [10, 11, 2999], [5000, 5001])
    assert my_rows(source, "SELECT id, label, CAST(price AS CHAR), ratio, HEX(raw), qty FROM item ORDER BY id") == [
        (i, t, str(a), r, raw.hex().upper(), q) for i, t, a, r, raw, q in
        pg_rows(target, "SELECT id, title, amount::numeric(12,2), ratio, raw, quantity FROM item_copy ORDER BY id")]


# drift planted in the MariaDB target of a PostgreSQL source
PLANTED_IN_MARIA = [
    ("UPDATE item_copy SET title = 'edited' WHERE id = 20", 20, ["title"]),
    ("UPDATE item_copy SET title = '' WHERE id = 21", 21, ["title"]),
    ("UPDATE item_copy SET title = CONCAT(title, ' ') WHERE id = 22", 22, ["title"]),
    ("UPDATE item_copy SET amount = amount + 0.0001 WHERE id = 23", 23, ["amount"]),
    ("UPDATE item_copy SET ratio = 0.3e0 WHERE id = 24", 24, ["ratio"]),
    ("UPDATE item_copy SET active = NOT active WHERE id = 25", 25, ["active"]),
    ("UPDATE item_copy SET seen = seen + INTERVAL 1 MICROSECOND WHERE id = 26", 26, ["seen"]),
    ("UPDATE item_copy SET quantity = NULL WHERE id = 27", 27, ["quantity"]),
    ("UPDATE item_copy SET raw = UNHEX('00') WHERE id = 28", 28, ["raw"]),
    ("UPDATE item_copy SET title = '北京 30' WHERE id = 30", 30, ["title"]),
    ("UPDATE item_copy SET born = born + INTERVAL 1 DAY WHERE id = 32", 32, ["born"]),
]


def test_pg_to_mariadb_planted_drift_found_exactly_repaired_and_recorded(pg_to_maria):
    config, source, target = pg_to_maria
    assert reconcile(config, expect=0)["different"] == 0
    pg_exec(source, "UPDATE item SET label = NULL WHERE id = 21", "UPDATE item SET ratio = 0.1::float8 + 0.2 "
            "WHERE id = 24", "UPDATE item SET label = '北京市 30' WHERE id = 30")
    my_exec(target, "UPDATE item_copy SET title = NULL WHERE id = 21",
            "UPDATE item_copy SET ratio = 0.1e0 + 0.2e0 WHERE id = 24",
            "UPDATE item_copy SET title = '北京市 30' WHERE id = 30")
    assert reconcile(config, expect=0)["different"] == 0
    [(seen,)] = my_rows(target, "SELECT seen FROM item_copy WHERE id = 34")
    conn = _connect(target)  # the same instant written in a session at +08:00 (TIMESTAMP stores the instant)
    try:
        with conn.cursor() as cur:
            cur.execute("SET time_zone = '+08:00'")
            cur.execute("UPDATE item_copy SET seen = %s + INTERVAL 8 HOUR WHERE id = 34", (seen,))
    finally:
        conn.close()
    assert my_rows(target, "SELECT seen FROM item_copy WHERE id = 34") == [(seen,)]
    my_exec(target, *[sql for sql, _, _ in PLANTED_IN_MARIA], "DELETE FROM item_copy WHERE id IN (10, 11, 2999)",
            "INSERT INTO item_copy (id, title) VALUES (5000, 'stray'), (5001, NULL)")
    # 41.25 stored as DECIMAL(14,4) 41.2500 is equal: never reported
    assert my_rows(target, "SELECT CAST(amount AS CHAR) FROM item_copy WHERE id = 33") == [("41.2500",)]
    _check_planted(config, PLANTED_IN_MARIA, [10, 11, 2999], [5000, 5001])
    assert [tuple(r) for r in pg_rows(source, "SELECT id, label, price, ratio, qty FROM item ORDER BY id")] == \
        [tuple(r) for r in my_rows(target, "SELECT id, title, CAST(amount AS DECIMAL(12,2)), ratio, quantity "
                                           "FROM item_copy ORDER BY id")]
    runs = json.loads(cli("reconcile", "history", "--config", str(config), "--pipeline", "p", "--json").output)
    assert [r["result"] for r in runs] == ["equal", "repaired", "drifted", "drifted", "equal", "equal"]  # dry run too
    assert runs[1]["repaired"] and json.loads(runs[1]["repaired"])["deleted"] == 2
    bad = cli("reconcile", "--config", str(config), "--pipeline", "p", "--where", "id = = 3", expect=2)
    assert "reconcile failed:" in bad.output


def test_mariadb_source_no_false_drift_while_replication_runs_and_since_checkpoint(maria_to_pg):
    config, source, target = maria_to_pg
    cli("triggers", "install", "--config", str(config), "--pipeline", "p")
    run_once(config)
    assert reconcile(config, "--since-checkpoint", expect=0)["verified_position"]

    def write(stop):
        conn = _connect(source)
        try:
            with conn.cursor() as cur:
                i = 0
                while not stop.is_set():
                    i += 1
                    cur.execute("UPDATE item SET price = price + 1, label = CONCAT(label, '.') WHERE id = %s",
                                (i * 37 % 3000 + 1,))
                    if i % 10 == 0:
                        cur.execute("DELETE FROM item WHERE id = %s", (i * 101 % 3000 + 1,))
                    cur.execute("INSERT IGNORE INTO item (id, label) VALUES (%s, 'new')", (10000 + i,))
                    stop.wait(0.002)
        finally:
            conn.close()

    assert_no_false_drift_while_writing(config, target, write)
    reconcile(config, "--repair", expect=0)
    # incremental verification reads the MariaDB change log: only the keys changed since the last clean run
    report = reconcile(config, "--since-checkpoint", "--repair", expect=None)
    assert report["tables"][0]["checked_keys"] > 0 and report["verified_position"], report
    from connectors.mysql.connector import MariadbConnector
    from engine.config import SourceConfig, load_config

    maria, capture = MariadbConnector(source), SourceConfig(database="src", tables=["item"])
    checkpoint = load_config(config).databases["dst"]
    before = maria.fence_head(capture)
    my_exec(source, "UPDATE item SET qty = 99 WHERE id IN (5, 6)")
    head = maria.fence_head(capture)
    assert int(head) == int(before) + 2
    from connectors.postgres.connector import PostgresConnector

    applied = PostgresConnector(checkpoint.url).load_checkpoint("p")
    item = maria.qualify("item")
    assert sorted(maria.unapplied(capture, "p", [item], applied, head)) == [(item, (5,)), (item, (6,))]
    assert maria.unapplied(capture, "p", [item], applied, before) == []
    binlog = SourceConfig(database="src", tables=["item"], capture="binlog")
    assert maria.unapplied(binlog, "p", [item], applied) is None and maria.fence_head(binlog) is None
    run_once(config)
    assert maria.unapplied(capture, "p", [item], PostgresConnector(checkpoint.url).load_checkpoint("p"), head) == []
    pg_exec(target, "UPDATE item_copy SET title = 'hand edit' WHERE id IN (5, 7)")  # 7 unchanged at the source
    report = reconcile(config, "--since-checkpoint", expect=1)
    assert report["tables"][0]["checked_keys"] == 2 and keys(report, "different") == [5]
