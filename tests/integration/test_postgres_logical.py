"""Log-based capture from PostgreSQL (pgoutput) into PostgreSQL, exactly once, with the slot kept honest."""

from __future__ import annotations

import random
import threading
import time

import psycopg
import pytest

from tests.helpers import cli, pg_exec, pg_rows, run_once, spawn_engine, write_node

pytestmark = pytest.mark.postgres

DDL = ("CREATE TABLE item (id integer PRIMARY KEY, label text NOT NULL, qty integer NOT NULL, "
       "amount numeric(12,2), at timestamptz, doc text)")
SAME = "SELECT id, label, qty, amount, at, doc FROM item ORDER BY id"


def node(tmp_path, source_url, target_url, **pipeline_extra):
    pipeline = {"name": "wal", "source": {"database": "src", "capture": "logical", "tables": ["item"]},
                "target": {"database": "dst"}, "batch_size": 400, "poll_interval": 0.05} | pipeline_extra
    return write_node(tmp_path / "node.yaml", {"src": source_url, "dst": target_url}, [pipeline])


@pytest.fixture
def logical(tmp_path, pg_logical_databases):
    source, target = pg_logical_databases
    pg_exec(source, DDL)
    pg_exec(target, DDL)
    config = node(tmp_path, source, target)
    return config, source, target


def slot_row(source):
    return pg_rows(source, "SELECT active, confirmed_flush_lsn FROM pg_replication_slots "
                           "WHERE database = current_database()")


def test_slot_commands_and_startup_checks(logical, tmp_path):
    config, source, target = logical
    output = cli("check", "--config", str(config), expect=2).output
    assert "replication slot tiersync_lsrc_" in output and "does not exist" in output
    assert "tiersync slot create" in output
    sql = cli("slot", "sql", "--config", str(config), "--pipeline", "wal").output
    assert 'CREATE PUBLICATION "tiersync_wal" FOR TABLE "public"."item"' in sql
    assert slot_row(source) == []  # sql changed nothing
    cli("slot", "create", "--config", str(config), "--pipeline", "wal")
    cli("check", "--config", str(config))
    status = cli("slot", "status", "--config", str(config), "--pipeline", "wal").output
    assert "inactive" in status and "WAL held" in status
    pg_exec(source, "CREATE TABLE nokey (a int, b text)")
    pg_exec(target, "CREATE TABLE nokey (a int, b text, PRIMARY KEY (a))")
    other = write_node(tmp_path / "other.yaml", {"src": source, "dst": target}, [{
        "name": "wal", "source": {"database": "src", "capture": "logical", "tables": ["item", "nokey"]},
        "target": {"database": "dst"}, "mappings": [{"source": "nokey", "source_key": ["a"]}]}])
    output = cli("check", "--config", str(other), expect=2).output
    assert "public.nokey is not in publication tiersync_wal" in output
    assert 'ALTER TABLE "public"."nokey" REPLICA IDENTITY FULL' in output
    cli("slot", "drop", "--config", str(config), "--pipeline", "wal")
    assert slot_row(source) == []


def test_stream_applies_inserts_updates_deletes_truncate_and_toast(logical, tmp_path):
    config, source, target = logical
    cli("slot", "create", "--config", str(config), "--pipeline", "wal")
    big = "长文本" * 200_000  # TOASTed
    pg_exec(source,
            "INSERT INTO item SELECT g, 'l' || g, g, g * 1.5, '2026-11-21 08:00+08', NULL "
            "FROM generate_series(1, 300) g",
            f"UPDATE item SET doc = '{big}' WHERE id = 7",
            "UPDATE item SET qty = -7 WHERE id = 7",  # the TOASTed doc is sent as 'unchanged'
            "DELETE FROM item WHERE id % 10 = 0",
            "UPDATE item SET id = 1000 WHERE id = 1")
    run_once(config)
    assert pg_rows(target, SAME) == pg_rows(source, SAME)
    assert pg_rows(target, "SELECT length(doc), qty FROM item WHERE id = 7") == [(600_000, -7)]
    # truncate: ignored by default, applied when the target says so
    pg_exec(source, "TRUNCATE item")
    run_once(config)
    assert pg_rows(target, "SELECT count(*) FROM item")[0][0] > 0
    config = node(tmp_path, source, target, target={"database": "dst", "truncate": "apply"})
    pg_exec(source, "INSERT INTO item VALUES (1, 'a', 1, 1, now(), NULL)", "TRUNCATE item",
            "INSERT INTO item VALUES (2, 'b', 2, 2, now(), NULL)")
    run_once(config)
    assert pg_rows(target, SAME) == pg_rows(source, SAME)


def test_replica_identity_default_and_full(logical):
    config, source, target = logical
    pg_exec(source, "ALTER TABLE item REPLICA IDENTITY FULL")
    cli("slot", "create", "--config", str(config), "--pipeline", "wal")
    pg_exec(source, "INSERT INTO item SELECT g, 'x', g, NULL, NULL, NULL FROM generate_series(1, 50) g",
            "UPDATE item SET label = 'y' WHERE id < 10", "DELETE FROM item WHERE id > 40")
    run_once(config)
    assert pg_rows(target, SAME) == pg_rows(source, SAME)
    pg_exec(source, "ALTER TABLE item REPLICA IDENTITY DEFAULT",
            "UPDATE item SET label = 'z' WHERE id < 5", "DELETE FROM item WHERE id > 30",
            "UPDATE item SET id = id + 100 WHERE id = 20")
    run_once(config)
    assert pg_rows(target, SAME) == pg_rows(source, SAME)


def test_large_transaction_stays_atomic_and_memory_bounded(logical, tmp_path):
    config, source, target = logical
    cli("slot", "create", "--config", str(config), "--pipeline", "wal")
    pg_exec(source, "INSERT INTO item SELECT g, 'big', g, NULL, NULL, NULL FROM generate_series(1, 60000) g")
    engine = spawn_engine(config, "--once", log=tmp_path / "engine.log")
    seen = set()
    while engine.poll() is None:  # the target never shows part of the transaction
        seen.add(pg_rows(target, "SELECT count(*) FROM item")[0][0])
        time.sleep(0.05)
    assert engine.returncode == 0, (tmp_path / "engine.log").read_text()
    assert seen <= {0, 60000}
    assert pg_rows(target, SAME) == pg_rows(source, SAME)


def test_kill_9_during_streaming_and_source_restart(logical, pg_logical_server, tmp_path):
    config, source, target = logical
    cli("slot", "create", "--config", str(config), "--pipeline", "wal")
    stop = threading.Event()
    chance = random.Random(11)

    def write():
        while not stop.is_set():
            try:
                with psycopg.connect(source) as conn:
                    while not stop.is_set():
                        key = chance.randint(1, 200)
                        conn.execute("INSERT INTO item VALUES (%s, 'w', 1, 1.25, now(), NULL) ON CONFLICT (id) "
                                     "DO UPDATE SET qty = item.qty + 1", (key,))
                        if key % 5 == 0:
                            conn.execute("DELETE FROM item WHERE id = %s", (key + 1,))
                        conn.commit()
            except psycopg.OperationalError:
                time.sleep(0.2)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for round_ in range(6):
            engine = spawn_engine(config, log=tmp_path / "engine.log")
            time.sleep(chance.uniform(0.8, 1.6))
            if round_ == 2:
                pg_logical_server.restart()  # the source goes away under a running stream
                time.sleep(1.0)
            engine.kill()
            engine.wait()
    finally:
        stop.set()
        writer.join()
    run_once(config)
    assert pg_rows(target, SAME) == pg_rows(source, SAME)


def test_idle_slot_keeps_advancing(logical, tmp_path):
    config, source, target = logical
    cli("slot", "create", "--config", str(config), "--pipeline", "wal")
    pg_exec(source, "CREATE TABLE unrelated (a int)")
    engine = spawn_engine(config, log=tmp_path / "engine.log")
    try:
        time.sleep(2)
        before = pg_rows(source, "SELECT confirmed_flush_lsn FROM pg_replication_slots "
                                   "WHERE database = current_database()")[0][0]
        pg_exec(source, "INSERT INTO unrelated SELECT generate_series(1, 20000)")  # WAL, but nothing published
        deadline = time.time() + 30
        while time.time() < deadline:
            after = pg_rows(source, "SELECT confirmed_flush_lsn FROM pg_replication_slots "
                                   "WHERE database = current_database()")[0][0]
            if after is not None and str(after) != str(before):
                break
            time.sleep(0.5)
        assert str(after) != str(before), "the slot did not move while the source was idle"
    finally:
        engine.terminate()
        engine.wait(30)


def test_initial_load_then_stream_with_kill_9_during_the_load(logical, tmp_path):
    """Rows that predate the slot arrive by the full load; changes after the slot by the stream; crashes resume."""
    _, source, target = logical
    pg_exec(source, "INSERT INTO item SELECT g, 'old', g, g, NULL, NULL FROM generate_series(1, 30000) g")
    config = node(tmp_path, source, target, initial_load=True, batch_size=150)
    cli("slot", "create", "--config", str(config), "--pipeline", "wal")  # the slot first, then the copy
    pg_exec(source, "UPDATE item SET label = 'changed after the slot' WHERE id % 100 = 0",
            "DELETE FROM item WHERE id % 333 = 0")
    engine = spawn_engine(config, log=tmp_path / "engine.log")
    deadline = time.time() + 60
    while time.time() < deadline:  # let the load get part of the way, then kill it
        if pg_rows(target, "SELECT to_regclass('tiersync.tiersync_snapshot')")[0][0] and \
                pg_rows(target, "SELECT coalesce(sum(rows), 0) FROM tiersync.tiersync_snapshot")[0][0] > 3000:
            break
        time.sleep(0.01)
    engine.kill()
    engine.wait()
    [(rows, done)] = pg_rows(target, "SELECT rows, done FROM tiersync.tiersync_snapshot")
    assert 0 < rows and not done
    pg_exec(source, "INSERT INTO item VALUES (40000, 'during the load', 1, 1, NULL, NULL)")
    run_once(config)
    assert pg_rows(target, SAME) == pg_rows(source, SAME)


def test_relayed_changes_carry_a_replication_origin_and_do_not_echo(tmp_path, pg_logical_server):
    """county ⇄ city, both captured from the WAL: what the city applied comes back tagged, and is not sent back."""
    county = pg_logical_server.create_database(f"county_echo_{time.time_ns()}")
    city = pg_logical_server.create_database(f"city_echo_{time.time_ns()}")
    for url in (county, city):
        pg_exec(url, DDL)
    up = write_node(tmp_path / "county.yaml", {"county": county, "city": city}, [{
        "name": "up", "source": {"database": "county", "capture": "logical", "tables": ["item"]},
        "target": {"database": "city", "node": "city-110100"}}], node_id="county-110101")
    down = write_node(tmp_path / "city.yaml", {"city": city, "county": county}, [{
        "name": "down", "source": {"database": "city", "capture": "logical", "tables": ["item"]},
        "target": {"database": "county", "node": "county-110101"}}], node_id="city-110100")
    cli("slot", "create", "--config", str(up), "--pipeline", "up")
    cli("slot", "create", "--config", str(down), "--pipeline", "down")
    pg_exec(county, "INSERT INTO item VALUES (1, 'county', 1, NULL, NULL, NULL)")
    pg_exec(city, "INSERT INTO item VALUES (2, 'city', 2, NULL, NULL, NULL)")
    version = "SELECT xmin::text FROM item WHERE id = %s"  # changes whenever the row is written again
    county_row, city_row = pg_rows(county, version, (1,)), pg_rows(city, version, (2,))
    for _ in range(3):
        run_once(up)
        run_once(down)
    assert pg_rows(county, SAME) == pg_rows(city, SAME)
    assert [r[0] for r in pg_rows(county, SAME)] == [1, 2]
    origins = {r[0] for r in pg_rows(city, "SELECT roname FROM pg_replication_origin")}
    assert "tiersync:up:county-110101" in origins
    # nothing came back to where it started: each side's own row was never written again
    assert pg_rows(county, version, (1,)) == county_row
    assert pg_rows(city, version, (2,)) == city_row
