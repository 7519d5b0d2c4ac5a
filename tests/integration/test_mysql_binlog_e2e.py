"""MariaDB → PostgreSQL by binlog with `tiersync run`: several tables with a foreign key, key updates, kill -9 of
the engine at random points, a MariaDB restart mid-stream, echo prevention and schema changes."""

from __future__ import annotations

import itertools
import os
import random
import threading
import time
from decimal import Decimal

import pymysql
import pytest

from tests.helpers import cli, pg_exec, pg_rows, run_once, spawn_engine, write_node
from tests.mysql_helpers import my_exec, my_rows

pytestmark = pytest.mark.postgres


MARIA_DDL = [
    "CREATE TABLE region (id int PRIMARY KEY, name varchar(40) NOT NULL)",
    """CREATE TABLE enterprise (id int PRIMARY KEY, region_id int NOT NULL, name varchar(60) NOT NULL,
       capital decimal(14,2), updated datetime(6), qty int unsigned NOT NULL DEFAULT 0,
       FOREIGN KEY (region_id) REFERENCES region (id))""",
    "CREATE TABLE audit (id bigint AUTO_INCREMENT PRIMARY KEY, note varchar(60) NOT NULL)",
]
PG_DDL = [
    "CREATE TABLE region (id int PRIMARY KEY, name text NOT NULL)",
    """CREATE TABLE enterprise (id int PRIMARY KEY, region_id int NOT NULL REFERENCES region (id), name text NOT NULL,
       capital numeric(14,2), updated timestamp(6), qty bigint NOT NULL)""",
    "CREATE TABLE audit_history (hid bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, id bigint, note text)",
]
REGION = "SELECT id, name FROM region ORDER BY id"
ENTERPRISE = "SELECT id, region_id, name, capital, updated, qty FROM enterprise ORDER BY id"


def node(tmp_path, source, target, **extra):
    common = {"batch_size": 300, "poll_interval": 0.05} | extra
    return write_node(tmp_path / "node.yaml", {"county": source, "city": target}, [
        {"name": "mirror", "source": {"database": "county", "capture": "binlog", "tables": ["region", "enterprise"]},
         "target": {"database": "city", "node": "city-110100"}} | common,
        {"name": "audit", "source": {"database": "county", "capture": "binlog", "tables": ["audit"]},
         "target": {"database": "city", "mode": "append"},
         "mappings": [{"source": "audit", "target": "audit_history"}]} | common,
    ])


@pytest.fixture(scope="module")
def binlog_pg():
    """A PostgreSQL target server of this module's own: every applying pipeline uses a replication origin, and a
    cluster has only max_replication_slots of them, so these tests do not spend the shared server's."""
    from tests.harness.postgres import PostgresServer

    server = PostgresServer().init().start()
    yield server
    server.destroy()


_databases = itertools.count()


@pytest.fixture
def binlog_node(tmp_path, maria_databases, binlog_pg):
    source = maria_databases[0]
    target = binlog_pg.create_database(f"city_{os.getpid()}_{next(_databases)}")
    my_exec(source, *MARIA_DDL)
    pg_exec(target, *PG_DDL)
    config = node(tmp_path, source, target)
    for pipeline in ("mirror", "audit"):
        cli("binlog", "mark", "--config", str(config), "--pipeline", pipeline)
    return config, source, target


def assert_in_sync(source, target) -> None:
    assert my_rows(source, REGION) == pg_rows(target, REGION)
    assert my_rows(source, ENTERPRISE) == pg_rows(target, ENTERPRISE)
    audit = [r[0] for r in pg_rows(target, "SELECT id FROM audit_history ORDER BY id")]
    assert len(audit) == len(set(audit)), "a change was applied twice"
    assert audit == [r[0] for r in my_rows(source, "SELECT id FROM audit ORDER BY id")], "a change was lost"


def test_binlog_status_and_mark(binlog_node):
    config, source, target = binlog_node
    output = cli("binlog", "status", "--config", str(config), "--pipeline", "mirror").output
    assert "binlog_row_metadata" in output and "FULL" in output and "applied:   binlog:" in output
    assert "lag:       0 bytes of binlog, ~0 transactions, 0.0 s" in output
    my_exec(source, "INSERT INTO region VALUES (1, '东城区')", "INSERT INTO region VALUES (2, '西城区')")
    output = cli("binlog", "status", "--config", str(config), "--pipeline", "mirror").output
    assert "~2 transactions" in output
    again = cli("binlog", "mark", "--config", str(config), "--pipeline", "mirror", expect=1).output
    assert "already has checkpoint" in again
    other = cli("binlog", "status", "--config", str(config), "--pipeline", "nope", expect=None)
    assert other.exit_code != 0
    status = cli("status", "--config", str(config)).output
    assert "mirror" in status and "binlog binlog." in status
    run_once(config)
    assert my_rows(source, REGION) == pg_rows(target, REGION) == [(1, "东城区"), (2, "西城区")]
    output = cli("binlog", "status", "--config", str(config), "--pipeline", "mirror").output
    assert "~0 transactions, 0.0 s" in output


def test_inserts_updates_deletes_and_key_updates_across_tables(binlog_node):
    config, source, target = binlog_node
    my_exec(source,
            "INSERT INTO region VALUES (1, '东城区'), (2, '西城区'), (3, '朝阳区')",
            "INSERT INTO enterprise VALUES (1, 1, '北京甲公司', 1000000.50, '2026-11-21 08:00:00.123456', 1), "
            "(2, 2, '乙公司😀', NULL, NULL, 4294967295), (3, 3, '丙', 0.01, '1999-12-31 23:59:59.999999', 0)",
            "BEGIN", "UPDATE enterprise SET capital = capital * 2, qty = qty + 1 WHERE id = 1",
            "UPDATE enterprise SET id = 30, name = '丙（改）' WHERE id = 3",  # key update
            "DELETE FROM enterprise WHERE id = 2", "DELETE FROM region WHERE id = 2", "COMMIT",
            "INSERT INTO region VALUES (4, '海淀区')", "UPDATE enterprise SET region_id = 4 WHERE id = 30",
            "INSERT INTO audit (note) VALUES ('a'), ('b')")
    run_once(config)
    assert_in_sync(source, target)
    assert pg_rows(target, "SELECT id, capital, qty FROM enterprise ORDER BY id") == [
        (1, Decimal("2000001.00"), 2), (30, Decimal("0.01"), 0)]
    # the stream keeps going from the checkpoint
    my_exec(source, "DELETE FROM enterprise", "DELETE FROM region WHERE id > 1",
            "INSERT INTO audit (note) VALUES ('c')")
    run_once(config)
    assert_in_sync(source, target)
    assert pg_rows(target, "SELECT count(*) FROM enterprise") == [(0,)]


def _workload(source: str, stop: threading.Event, seed: int) -> None:
    chance = random.Random(seed)
    while not stop.is_set():
        try:
            conn = pymysql.connect(**_args(source))
            with conn.cursor() as cur:
                while not stop.is_set():
                    key = chance.randint(1, 120)
                    cur.execute("BEGIN")
                    action = chance.random()
                    if action < 0.5:
                        cur.execute("INSERT INTO enterprise VALUES (%s, %s, %s, %s, now(6), 1) ON DUPLICATE KEY "
                                    "UPDATE qty = qty + 1, capital = capital + 0.01, updated = now(6)",
                                    (key, chance.randint(1, 5), f"企业{key}", key * 1.25))
                    elif action < 0.7:
                        cur.execute("DELETE FROM enterprise WHERE id = %s", (key,))
                    elif action < 0.85:
                        cur.execute("UPDATE IGNORE enterprise SET id = id + 1000 WHERE id = %s", (key,))
                    else:
                        cur.execute("UPDATE enterprise SET id = id - 1000 WHERE id > 1000 AND id - 1000 NOT IN "
                                    "(SELECT id FROM (SELECT id FROM enterprise) e) LIMIT 1")
                    cur.execute("INSERT INTO audit (note) VALUES (%s)", (f"w{seed}",))
                    cur.execute("COMMIT")
        except pymysql.Error:
            time.sleep(0.3)  # the server is restarting


def _args(url: str) -> dict:
    from connectors.mysql.connection import connect_args

    return connect_args(url) | {"autocommit": True}


@pytest.mark.slow
def test_kill_9_at_random_points_and_a_mariadb_restart_converge_exactly(binlog_node, maria_server, tmp_path):
    config, source, target = binlog_node
    my_exec(source, "INSERT INTO region VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd'), (5, 'e')")
    stop = threading.Event()
    writers = [threading.Thread(target=_workload, args=(source, stop, seed)) for seed in (1, 2)]
    for writer in writers:
        writer.start()
    chance = random.Random(7)
    log = tmp_path / "engine.log"
    try:
        for round_ in range(6):
            engine = spawn_engine(config, log=log)
            time.sleep(chance.uniform(1.0, 2.5))
            if round_ == 3:
                maria_server.restart()  # the source goes away under a running stream
                time.sleep(1.5)
            engine.kill()
            engine.wait()
    finally:
        stop.set()
        for writer in writers:
            writer.join()
    assert int(my_rows(source, "SELECT count(*) FROM audit")[0][0]) > 200  # the workload did run
    run_once(config)
    assert_in_sync(source, target)


def test_changes_applied_for_the_target_node_are_not_echoed(binlog_node):
    """tiersync's MySQL apply session marks each transaction with one tiersync_apply_origin row (see
    connectors/mysql/binlog_reader.py); a pipeline never sends a change back to the node it came from."""
    config, source, target = binlog_node
    my_exec(source, "CREATE TABLE tiersync_apply_origin (id int PRIMARY KEY, origin varchar(200) NOT NULL, "
                    "n bigint NOT NULL DEFAULT 0)",
            "INSERT INTO region VALUES (1, 'local')",
            "BEGIN",
            "INSERT INTO tiersync_apply_origin VALUES (1, 'city-110100', 1) "
            "ON DUPLICATE KEY UPDATE origin = VALUES(origin), n = n + 1",
            "INSERT INTO region VALUES (2, 'from the city')", "COMMIT",
            "BEGIN",
            "INSERT INTO tiersync_apply_origin VALUES (1, 'province-110000', 1) "
            "ON DUPLICATE KEY UPDATE origin = VALUES(origin), n = n + 1",
            "INSERT INTO region VALUES (3, 'from the province')", "COMMIT",
            "INSERT INTO region VALUES (4, 'local again')")
    run_once(config)
    assert pg_rows(target, REGION) == [(1, "local"), (3, "from the province"), (4, "local again")]


def test_schema_changes_while_streaming(binlog_node, tmp_path):
    config, source, target = binlog_node
    my_exec(source, "INSERT INTO region VALUES (1, 'a')")
    run_once(config)
    # a column added on both sides: the pipeline re-plans and carries the new column
    pg_exec(target, "ALTER TABLE region ADD COLUMN code text")
    my_exec(source, "ALTER TABLE region ADD COLUMN code varchar(12)", "INSERT INTO region VALUES (2, 'b', '110102')",
            "UPDATE region SET code = '110101' WHERE id = 1")
    run_once(config)
    assert pg_rows(target, "SELECT id, name, code FROM region ORDER BY id") == [(1, "a", "110101"), (2, "b", "110102")]
    # a column dropped at the source: the rest still applies, never shifted into other columns
    my_exec(source, "ALTER TABLE region DROP COLUMN code", "INSERT INTO region VALUES (3, 'c')",
            "UPDATE region SET name = 'a2' WHERE id = 1")
    run_once(config)
    assert pg_rows(target, "SELECT id, name, code FROM region ORDER BY id") == [
        (1, "a2", "110101"), (2, "b", "110102"), (3, "c", None)]
    # a column renamed at the source that the target does not have: the pipeline stops and says why
    my_exec(source, "ALTER TABLE region CHANGE name title varchar(40)", "INSERT INTO region VALUES (4, 'd')")
    engine = spawn_engine(config, "--once", log=tmp_path / "engine.log")
    assert engine.wait(120) == 1
    message = (tmp_path / "engine.log").read_text()
    assert "title" in message and "not in the target table" in message, message
    assert pg_rows(target, "SELECT count(*) FROM region") == [(3,)]
