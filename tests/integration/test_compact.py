"""tiersync compact: a backlog of many changes per key ships as its net change, and the target still converges."""

from __future__ import annotations

import re

from engine.compaction import LogRow, net_log_change
from tests.helpers import cli, pg_exec, pg_rows, run_once, write_node

DDL = "CREATE TABLE item (id integer PRIMARY KEY, label text, qty integer)"
SAME = "SELECT id, label, qty FROM item ORDER BY id"


def test_compaction_of_a_backlog_then_the_target_converges(tmp_path, pg_databases):
    source, target = pg_databases
    pg_exec(source, DDL, "INSERT INTO item SELECT g, 'row ' || g, 0 FROM generate_series(1, 1000) g")
    pg_exec(target, DDL)
    config = write_node(tmp_path / "node.yaml", {"src": source, "dst": target}, [{
        "name": "p", "source": {"database": "src", "tables": ["item"]}, "target": {"database": "dst"},
        "initial_load": True}])
    cli("triggers", "install", "--config", str(config), "--pipeline", "p")
    run_once(config)  # the initial load; the change log is empty again
    # the link goes offline: many changes to few keys pile up
    for _ in range(30):
        pg_exec(source, "UPDATE item SET qty = qty + 1 WHERE id <= 100")
    pg_exec(source, "INSERT INTO item VALUES (5001, 'born and gone', 1)", "UPDATE item SET qty = 2 WHERE id = 5001",
            "DELETE FROM item WHERE id = 5001",
            "INSERT INTO item VALUES (5002, 'born', 1)", "UPDATE item SET qty = 7 WHERE id = 5002",
            "UPDATE item SET label = 'gone' WHERE id = 200", "DELETE FROM item WHERE id = 200",
            "DELETE FROM item WHERE id = 300", "INSERT INTO item VALUES (300, 'again', 3)",
            "UPDATE item SET qty = 9 WHERE id = 400", "UPDATE item SET id = 40000 WHERE id = 400")  # a key change
    logged = pg_rows(source, "SELECT count(*) FROM tiersync.tiersync_change_log")[0][0]
    assert logged == 30 * 100 + 11
    output = cli("compact", "--config", str(config)).output
    figures = re.search(r"change log (\d+) → (\d+) rows.*?(\d+) keys compacted, (\d+) changes merged away", output)
    assert figures, output
    before, after, keys, merged = map(int, figures.groups())
    assert before == logged
    assert keys == 100 + 4  # ids 1..100, 5001, 5002, 200, 300 (not 400/40000: its key changed)
    assert after == before - merged == 100 + 4 + 2
    assert pg_rows(source, "SELECT count(*) FROM tiersync.tiersync_change_log")[0][0] == after
    run_once(config)
    assert pg_rows(source, SAME) == pg_rows(target, SAME)
    assert cli("compact", "--config", str(config)).output.count("→ 0 rows")  # everything applied: purged


def test_net_log_change_rules():
    def rows(*ops, origin=None):
        return [LogRow(i, op, f"b{i}" if op != "c" else None, origin) for i, op in enumerate(ops, 1)]

    assert net_log_change(rows("u")) is None
    net = net_log_change(rows("c", "u", "u"))
    assert (net.keep, net.op, net.before, net.remove) == (3, "c", None, [1, 2])
    net = net_log_change(rows("u", "u", "d"))
    assert (net.keep, net.op, net.before, net.remove) == (3, "d", "b3", [1, 2])
    net = net_log_change(rows("c", "d"))  # the delete stays: a consumer may have read the insert already
    assert (net.keep, net.op) == (2, "d")
    net = net_log_change(rows("d", "c", "u"))
    assert (net.keep, net.op, net.before) == (3, "u", "b1")
    mixed = rows("u", "u")
    mixed[1].origin = "city-1"
    assert net_log_change(mixed) is None
    moved = rows("u", "u")
    moved[0].key_changed = True
    assert net_log_change(moved) is None


def test_compaction_of_a_sqlite_change_log(tmp_path, pg_databases):
    import sqlite3

    path = tmp_path / "county.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, label TEXT, qty INTEGER)")
        conn.executemany("INSERT INTO item VALUES (?, ?, 0)", [(i, f"第{i}项") for i in range(1, 201)])
    _, target = pg_databases
    pg_exec(target, DDL)
    config = write_node(tmp_path / "node.yaml", {"src": f"sqlite:///{path}", "dst": target}, [{
        "name": "p", "source": {"database": "src", "tables": ["item"]}, "target": {"database": "dst"},
        "initial_load": True}])
    cli("triggers", "install", "--config", str(config), "--pipeline", "p")
    run_once(config)
    with sqlite3.connect(path) as conn:
        for _ in range(20):
            conn.execute("UPDATE item SET qty = qty + 1 WHERE id <= 50")
        conn.execute("DELETE FROM item WHERE id = 60")
        conn.execute("INSERT INTO item VALUES (60, 'again', 6)")
        logged = conn.execute("SELECT count(*) FROM tiersync_change_log").fetchone()[0]
    assert logged == 20 * 50 + 2
    output = cli("compact", "--config", str(config)).output
    assert f"change log {logged} → 51 rows" in output and "51 keys compacted" in output, output
    run_once(config)
    with sqlite3.connect(path) as conn:
        expected = conn.execute(SAME).fetchall()
    assert pg_rows(target, SAME) == expected


def test_compaction_while_the_pipeline_runs_loses_nothing(tmp_path, pg_databases):
    import threading

    import psycopg

    from engine.config import load_config
    from engine.node import run_node

    source, target = pg_databases
    pg_exec(source, DDL, "INSERT INTO item SELECT g, 'row ' || g, 0 FROM generate_series(1, 300) g")
    pg_exec(target, DDL)
    config = write_node(tmp_path / "node.yaml", {"src": source, "dst": target}, [{
        "name": "p", "source": {"database": "src", "tables": ["item"]}, "target": {"database": "dst"},
        "initial_load": True, "batch_size": 50, "poll_interval": 0.02}])
    cli("triggers", "install", "--config", str(config), "--pipeline", "p")
    stop = threading.Event()
    runner = threading.Thread(target=run_node, args=(load_config(config), ["p"]), kwargs={"stop": stop, "once": False})
    runner.start()

    def write():
        with psycopg.connect(source, autocommit=True) as conn:
            i = 0
            while not stop.is_set():
                i += 1
                key = i % 40 + 1
                conn.execute("UPDATE item SET qty = qty + 1, label = %s WHERE id = %s", (f"v{i}", key))
                if i % 7 == 0:
                    conn.execute("DELETE FROM item WHERE id = %s", (300 + i % 13,))
                    conn.execute("INSERT INTO item VALUES (%s, 'back', %s) ON CONFLICT (id) DO UPDATE SET qty = %s",
                                 (300 + i % 13, i, i))

    writer = threading.Thread(target=write)
    writer.start()
    merged = 0
    try:
        for _ in range(15):
            output = cli("compact", "--config", str(config)).output
            merged += int(re.search(r"(\d+) changes merged away", output).group(1))
    finally:
        stop.set()
        writer.join()
        runner.join()
    run_once(config)
    assert pg_rows(source, SAME) == pg_rows(target, SAME)
    print(f"{merged} changes merged away while the pipeline ran")
