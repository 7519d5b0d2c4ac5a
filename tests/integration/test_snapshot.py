"""Full loads that hand over to the stream: concurrent writes, kill -9 mid-load, re-load after drift."""

from __future__ import annotations

import sqlite3
import threading

import psycopg
import pytest

from tests.helpers import cli, kill_9_during_load, pg_exec, pg_rows, run_once, write_node

DDL = "CREATE TABLE item (id integer PRIMARY KEY, label text NOT NULL, qty integer NOT NULL)"


@pytest.fixture
def loaded_source(tmp_path, pg_databases):
    source, target = pg_databases
    pg_exec(source, DDL, "INSERT INTO item SELECT g, 'row ' || g, g FROM generate_series(1, 20000) g")
    pg_exec(target, DDL.replace("item", "item_copy").replace("label", "title"))
    config = write_node(tmp_path / "node.yaml", {"src": source, "dst": target}, [{
        "name": "load", "source": {"database": "src", "tables": ["item"]}, "target": {"database": "dst"},
        "batch_size": 500, "poll_interval": 0.05,
        "mappings": [{"source": "item", "target": "item_copy", "columns": {"label": "title"}}]}])
    return config, source, target


SAME = ("SELECT id, label, qty FROM item ORDER BY id", "SELECT id, title, qty FROM item_copy ORDER BY id")


def test_snapshot_with_writes_during_the_copy_converges(loaded_source):
    config, source, target = loaded_source
    cli("triggers", "install", "--config", str(config), "--pipeline", "load")  # capture starts before the copy
    stop = threading.Event()

    def write():
        with psycopg.connect(source, autocommit=True) as conn:
            i = 0
            while not stop.is_set():
                i += 1
                conn.execute("UPDATE item SET qty = qty + 1 WHERE id = %s", (i * 37 % 20000 + 1,))
                conn.execute("DELETE FROM item WHERE id = %s", (i * 101 % 20000 + 1,))
                conn.execute("INSERT INTO item VALUES (%s, 'new', 0) ON CONFLICT DO NOTHING", (20000 + i,))

    writer = threading.Thread(target=write)
    writer.start()
    try:
        output = cli("snapshot", "--config", str(config), "--pipeline", "load", "--chunk-rows", "700").output
    finally:
        stop.set()
        writer.join()
    assert "public.item: " in output and "rows loaded" in output
    run_once(config)  # the stream replays what changed during the copy
    assert pg_rows(source, SAME[0]) == pg_rows(target, SAME[1])


def test_kill_9_during_snapshot_resumes_from_the_last_chunk(loaded_source, tmp_path):
    config, source, target = loaded_source
    text = config.read_text().replace("batch_size: 500", "batch_size: 150\n  initial_load: true")
    config.write_text(text)
    cli("triggers", "install", "--config", str(config), "--pipeline", "load")
    kill_9_during_load(config, target, tmp_path / "engine.log", rounds=3, step=600)  # a few chunks each time
    pg_exec(source, "UPDATE item SET qty = -1 WHERE id % 1000 = 0", "DELETE FROM item WHERE id % 999 = 0")
    run_once(config)  # resumes the load (never redoes finished chunks), then streams
    assert pg_rows(source, SAME[0]) == pg_rows(target, SAME[1])
    [(copied, done)] = pg_rows(target, "SELECT rows, done FROM tiersync.tiersync_snapshot")
    assert done and 20000 - 20 <= copied <= 20000  # rows deleted before the resume were not copied
    run_once(config)  # a finished initial load is not repeated
    assert pg_rows(target, "SELECT rows FROM tiersync.tiersync_snapshot") == [(copied,)]


def test_reload_after_drift_repairs_and_removes_extras(loaded_source):
    config, source, target = loaded_source
    cli("triggers", "install", "--config", str(config), "--pipeline", "load")
    cli("snapshot", "--config", str(config), "--pipeline", "load")
    pg_exec(target, "UPDATE item_copy SET title = 'edited by hand' WHERE id < 50",
            "DELETE FROM item_copy WHERE id BETWEEN 100 AND 120",
            "INSERT INTO item_copy VALUES (999999, 'stray', 1)")
    output = cli("snapshot", "--config", str(config), "--pipeline", "load").output
    assert "1 extra target rows removed" in output
    assert pg_rows(source, SAME[0]) == pg_rows(target, SAME[1])


def test_snapshot_where_and_sqlite_source(tmp_path, pg_databases):
    path = tmp_path / "county.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, label TEXT NOT NULL, qty INTEGER NOT NULL)")
        conn.executemany("INSERT INTO item VALUES (?, ?, ?)", [(i, f"第{i}项", i % 10) for i in range(1, 3001)])
    _, target = pg_databases
    pg_exec(target, DDL)
    config = write_node(tmp_path / "node.yaml", {"src": f"sqlite:///{path}", "dst": target}, [{
        "name": "load", "source": {"database": "src", "tables": ["item"]}, "target": {"database": "dst"}}])
    cli("triggers", "install", "--config", str(config), "--pipeline", "load")
    output = cli("snapshot", "--config", str(config), "--pipeline", "load", "--where", "qty = 3").output
    assert "item: 300 rows loaded" in output
    assert pg_rows(target, "SELECT count(*) FROM item") == [(300,)]
    cli("snapshot", "--config", str(config), "--pipeline", "load", "--chunk-rows", "128")
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE item SET label = label || '!' WHERE id % 7 = 0")
        expected = conn.execute("SELECT id, label, qty FROM item ORDER BY id").fetchall()
    run_once(config)
    assert pg_rows(target, "SELECT id, label, qty FROM item ORDER BY id") == expected


def test_snapshot_refuses_history_tables_and_unknown_tables(tmp_path, pg_databases):
    source, target = pg_databases
    pg_exec(source, "CREATE TABLE log (a int, b text)")
    pg_exec(target, "CREATE TABLE log (a int, b text)")
    config = write_node(tmp_path / "node.yaml", {"src": source, "dst": target}, [{
        "name": "h", "source": {"database": "src", "tables": ["log"]},
        "target": {"database": "dst", "mode": "append"}}])
    assert "no current state to load" in cli("snapshot", "--config", str(config), "--pipeline", "h", expect=2).output
    output = cli("snapshot", "--config", str(config), "--pipeline", "h", "--table", "nope", expect=2).output
    assert "does not capture public.nope" in output
