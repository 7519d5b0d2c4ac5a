"""SQLite capture and apply, the demo, and origins that stop echo loops."""

from __future__ import annotations

import json
import sqlite3

from tests.helpers import assert_acknowledge_does_not_wait_for_the_read, cli, pg_exec, pg_rows, run_once, write_node


def sqlite_url(path) -> str:
    return f"sqlite:///{path}"  # path is absolute, so this is sqlite:////…


def make_db(path, *statements):
    with sqlite3.connect(path) as conn:
        for statement in statements:
            conn.execute(statement)
    return sqlite_url(path)


def rows(path, sql):
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


def test_demo_runs_and_prints_the_replicated_rows(tmp_path):
    output = cli("demo", "--dir", str(tmp_path)).output
    assert "北京东城安全化工有限公司" in output and "东城建筑工程集团有限公司" in output
    assert "东直门烟花爆竹仓储" not in output.split("4. replicated")[1]  # deleted at the county
    assert "pending=0" in output and "dead letters=0" in output
    assert rows(tmp_path / "city.db", "SELECT count(*) FROM qy_jbxx") == [(4,)]


def test_sqlite_to_sqlite_mirror_with_triggers_lifecycle(tmp_path):
    src = make_db(tmp_path / "s.db", "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, amount NUMERIC(10,2))")
    dst = make_db(tmp_path / "d.db", "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, amount NUMERIC(10,2))")
    config = write_node(tmp_path / "node.yaml", {"s": src, "d": dst}, [
        {"name": "p", "source": {"database": "s", "tables": ["t"]}, "target": {"database": "d"}}])
    sql = cli("triggers", "sql", "--config", str(config), "--pipeline", "p").output
    assert "CREATE TRIGGER IF NOT EXISTS" in sql
    assert rows(tmp_path / "s.db", "SELECT count(*) FROM sqlite_master WHERE name LIKE 'tiersync%'") == [(0,)]
    cli("triggers", "install", "--config", str(config), "--pipeline", "p")
    cli("triggers", "install", "--config", str(config), "--pipeline", "p")
    with sqlite3.connect(tmp_path / "s.db") as conn:
        conn.executemany("INSERT INTO t VALUES (?, ?, ?)", [(i, f"名{i}", i * 1.5) for i in range(1, 101)])
        conn.execute("UPDATE t SET name = name || '!' WHERE id % 3 = 0")
        conn.execute("UPDATE t SET name = name WHERE id = 1")  # no change: nothing captured
        conn.execute("DELETE FROM t WHERE id % 4 = 0")
    assert rows(tmp_path / "s.db", "SELECT count(*) FROM tiersync_change_log") == [(100 + 33 + 25,)]
    status = cli("triggers", "status", "--config", str(config), "--pipeline", "p").output
    assert "yes" in status and "158" in status
    run_once(config)
    everything = "SELECT * FROM t ORDER BY id"
    assert rows(tmp_path / "s.db", everything) == rows(tmp_path / "d.db", everything)
    assert rows(tmp_path / "s.db", "SELECT count(*) FROM tiersync_change_log") == [(0,)]
    cli("triggers", "uninstall", "--config", str(config), "--pipeline", "p")
    assert rows(tmp_path / "s.db", "SELECT name FROM sqlite_master WHERE name LIKE 'tiersync%'") == []


def test_relayed_changes_carry_their_origin_and_never_echo_back(tmp_path, pg_databases):
    """county (SQLite) ⇄ city (PostgreSQL), two one-way pipelines, both captured: no ping-pong."""
    county_path = tmp_path / "county.db"
    county = make_db(county_path, "CREATE TABLE enterprise (id INTEGER PRIMARY KEY, name TEXT)")
    _, city = pg_databases
    pg_exec(city, "CREATE TABLE enterprise (id integer PRIMARY KEY, name text)")
    county_node = write_node(tmp_path / "county.yaml", {"county": county, "city": city}, [
        {"name": "up", "source": {"database": "county", "tables": ["enterprise"]},
         "target": {"database": "city", "node": "city-110100"}}], node_id="county-110101")
    city_node = write_node(tmp_path / "city.yaml", {"city": city, "county": county}, [
        {"name": "down", "source": {"database": "city", "tables": ["public.enterprise"]},
         "target": {"database": "county", "node": "county-110101"}}], node_id="city-110100")
    cli("triggers", "install", "--config", str(county_node), "--pipeline", "up")
    cli("triggers", "install", "--config", str(city_node), "--pipeline", "down")
    with sqlite3.connect(county_path) as conn:
        conn.execute("INSERT INTO enterprise VALUES (1, '县里的企业')")
    pg_exec(city, "INSERT INTO enterprise VALUES (2, '市里的企业')")
    run_once(county_node)
    # the city's capture recorded the applied change with the county as its origin
    assert pg_rows(city, "SELECT tbl, op, origin FROM tiersync.tiersync_change_log ORDER BY id") == [
        ("public.enterprise", "c", None), ("public.enterprise", "c", "county-110101")]
    run_once(city_node)
    with sqlite3.connect(county_path) as conn:
        assert conn.execute("SELECT * FROM enterprise ORDER BY id").fetchall() == [(1, "县里的企业"), (2, "市里的企业")]
        # only the city's own change came down, and it is recorded as the city's
        assert conn.execute("SELECT origin, json_extract(after, '$.id') FROM tiersync_change_log").fetchall() == [
            ("city-110100", 2)]
    run_once(county_node)  # the county's capture of the city's change is not sent back up
    assert pg_rows(city, "SELECT count(*) FROM tiersync.tiersync_change_log") == [(0,)]
    status = json.loads(cli("status", "--config", str(county_node), "--json").output)
    assert status["pipelines"][0]["pending"] == 0
    assert pg_rows(city, "SELECT id, name FROM enterprise ORDER BY id") == [(1, "县里的企业"), (2, "市里的企业")]


def test_unreachable_database_is_a_clear_error(tmp_path):
    src = make_db(tmp_path / "s.db", "CREATE TABLE t (id INTEGER PRIMARY KEY)")
    config = write_node(tmp_path / "node.yaml", {"s": src, "d": "postgresql://postgres@127.0.0.1:1/nowhere"}, [
        {"name": "p", "source": {"database": "s", "tables": ["t"]}, "target": {"database": "d"}}])
    output = cli("check", "--config", str(config), expect=2).output
    assert "cannot connect to postgresql://postgres@127.0.0.1:1/nowhere" in output
    missing = write_node(tmp_path / "n2.yaml", {"s": sqlite_url(tmp_path / "missing.db"), "d": src}, [
        {"name": "p", "source": {"database": "s", "tables": ["t"]}, "target": {"database": "d"}}])
    output = cli("check", "--config", str(missing), expect=2).output
    assert "missing.db does not exist" in output


def test_change_log_acknowledgement_runs_while_the_next_read_is_inside_its_statement(tmp_path):
    """As for the inbox: the pipeline acknowledges on its thread while its prefetch thread reads the next batch."""

    from engine.config import load_config
    from engine.pipeline import PipelineRunner

    src = make_db(tmp_path / "s.db", "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)")
    dst = make_db(tmp_path / "d.db", "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)")
    config = write_node(tmp_path / "node.yaml", {"s": src, "d": dst}, [
        {"name": "p", "source": {"database": "s", "tables": ["t"]}, "target": {"database": "d"}, "batch_size": 2}])
    cli("triggers", "install", "--config", str(config), "--pipeline", "p")
    with sqlite3.connect(tmp_path / "s.db") as conn:
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"名{i}") for i in range(1, 5)])
    runner = PipelineRunner(load_config(config), "p")
    runner.open()
    reader = runner.reader
    first = reader.read(2)
    assert_acknowledge_does_not_wait_for_the_read(reader, reader.conn, first.position, 2)
    runner.close()
    assert rows(tmp_path / "s.db", "SELECT count(*) FROM tiersync_change_log") == [(2,)]  # the first two purged
