"""`tiersync reload` against a running node process: it finds the node, the node takes the new rules at a batch
boundary and answers; broken rules are refused and the old ones stay; with no node running it says so."""

from __future__ import annotations

import signal
import sqlite3
import time

import yaml

from tests.helpers import cli, spawn_engine, wait_until, write_node


def _exec(path, *statements):
    with sqlite3.connect(path) as conn:
        for statement in statements:
            conn.execute(statement)


def _rows(path, sql):
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


def _node(tmp_path, source_columns="id INTEGER PRIMARY KEY", target_columns="id INTEGER PRIMARY KEY",
          mappings=None):
    """Two SQLite databases with a table ``t``, pipeline ``p`` between them (with ``mappings``), triggers
    installed."""
    source, target = tmp_path / "s.db", tmp_path / "t.db"
    _exec(source, f"CREATE TABLE t ({source_columns})")
    _exec(target, f"CREATE TABLE t ({target_columns})")
    config = write_node(tmp_path / "node.yaml", {"s": f"sqlite:///{source}", "t": f"sqlite:///{target}"}, [{
        "name": "p", "source": {"database": "s", "tables": ["t"]}, "target": {"database": "t"},
        "poll_interval": 0.2, **({"mappings": mappings} if mappings else {})}])
    cli("triggers", "install", "--config", str(config), "--pipeline", "p")
    return source, target, config


def _set_rules(config, **mapping):
    doc = yaml.safe_load(config.read_text(encoding="utf-8"))
    doc["pipelines"][0]["mappings"][0].update(mapping)
    config.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")


def test_reload_command_makes_the_running_node_take_new_rules(tmp_path):
    source, target, config = _node(tmp_path, "id INTEGER PRIMARY KEY, name TEXT",
                                   "id INTEGER PRIMARY KEY, name TEXT, tag TEXT",
                                   [{"source": "t", "constants": {"tag": "v1"}}])

    out = cli("reload", "--config", str(config), expect=1).output
    assert "no running node county-110101 found" in out and "tiersync run --config" in out

    log = tmp_path / "engine.log"
    engine = spawn_engine(config, log=log)
    try:
        _exec(source, "INSERT INTO t VALUES (1, 'one')")
        wait_until(lambda: _rows(target, "SELECT tag FROM t") == [("v1",)], log)

        _set_rules(config, constants={"tag": "v2"})
        out = cli("reload", "--config", str(config), "--timeout", "60").output
        assert f"process {engine.pid}" in out
        assert "pipeline p: rules reloaded from" in out and "1 mapping(s) changed" in out
        assert "t: mapping rules changed; existing target rows were written with the old rules and need a " \
               "re-load (tiersync snapshot --pipeline p --table t)" in out
        _exec(source, "INSERT INTO t VALUES (2, 'two')")
        wait_until(lambda: _rows(target, "SELECT id, tag FROM t ORDER BY id") == [(1, "v1"), (2, "v2")], log)
        assert "asked by " in log.read_text()  # who asked, and when, is in the node's log

        _set_rules(config, columns={"no_such_column": "x"})  # valid YAML, wrong against the live source table
        out = cli("reload", "--config", str(config), "--timeout", "60", expect=1).output
        assert "pipeline p: rules NOT reloaded" in out and "no_such_column" in out
        _exec(source, "INSERT INTO t VALUES (3, 'three')")
        wait_until(lambda: _rows(target, "SELECT id, tag FROM t WHERE id = 3") == [(3, "v2")], log)  # old rules stay
    finally:
        engine.send_signal(signal.SIGTERM)
        engine.wait(timeout=60)
    assert engine.returncode == 0, log.read_text()
    assert list((tmp_path / ".tiersync").glob("*.json")) == []  # the process cleaned up its run files
    out = cli("reload", "--config", str(config), expect=1).output
    assert "no running node county-110101 found" in out


def test_reload_ignores_a_pid_file_left_by_a_killed_node(tmp_path):
    source, target = tmp_path / "s.db", tmp_path / "t.db"
    _exec(source, "CREATE TABLE t (id INTEGER PRIMARY KEY)")
    _exec(target, "CREATE TABLE t (id INTEGER PRIMARY KEY)")
    config = write_node(tmp_path / "node.yaml", {"s": f"sqlite:///{source}", "t": f"sqlite:///{target}"}, [{
        "name": "p", "source": {"database": "s", "tables": ["t"]}, "target": {"database": "t"}}])
    cli("triggers", "install", "--config", str(config), "--pipeline", "p")
    log = tmp_path / "engine.log"
    engine = spawn_engine(config, log=log)
    try:
        wait_until(lambda: list((tmp_path / ".tiersync").glob("county-110101-*.json")), log)
    finally:
        engine.kill()  # kill -9: no clean-up
        engine.wait(timeout=60)
    assert [p.name for p in (tmp_path / ".tiersync").glob("*.json")] == [f"county-110101-{engine.pid}.json"]
    out = cli("reload", "--config", str(config), expect=1).output
    assert "no running node county-110101 found" in out
    assert list((tmp_path / ".tiersync").glob("*.json")) == []  # the stale pid file is gone


def test_reloads_asked_at_the_same_moment_are_each_answered(tmp_path):
    """Two operators (or scripts) asking at once: the signals may merge into one, but each request is taken and
    each asker gets its own answer."""
    from engine.config import load_config
    from engine.control import ask_reload, running_processes, wait_for_answer

    source, target, config = _node(tmp_path)
    log = tmp_path / "engine.log"
    engine = spawn_engine(config, log=log)
    try:
        _exec(source, "INSERT INTO t VALUES (1)")
        wait_until(lambda: _rows(target, "SELECT id FROM t") == [(1,)], log)
        [process] = running_processes(load_config(config))
        engine.send_signal(signal.SIGSTOP)  # both requests land before the node runs again: one pending SIGHUP
        try:
            asked = [ask_reload(process, "operator-a"), ask_reload(process, "operator-b")]
        finally:
            engine.send_signal(signal.SIGCONT)
        answers = [wait_for_answer(process, request_id, 30) for request_id in asked]
        assert [a and a["done"] for a in answers] == [True, True], (answers, log.read_text())
        assert [a["id"] for a in answers] == asked
        assert all("pipeline p: rules reloaded" in a["answers"]["p"][0] for a in answers)
        assert [a["by"] for a in answers] == ["operator-a", "operator-b"]
    finally:
        engine.send_signal(signal.SIGTERM)
        engine.wait(timeout=60)
    assert engine.returncode == 0, log.read_text()
    assert list((tmp_path / ".tiersync").glob("*.json")) == []


EMBEDDED = """
import sys, threading
from engine.config import load_config
from engine.node import run_node
config = load_config(sys.argv[1])
stop = threading.Event()
worker = threading.Thread(target=run_node, args=(config, ["p"]), kwargs={"once": False, "stop": stop})
worker.start()
worker.join()
"""


def test_a_node_that_cannot_take_sighup_is_not_offered_to_reload(tmp_path):
    """run_node outside the main thread (tiersync embedded in another program) cannot install a SIGHUP handler;
    it must then keep no pid file, or `tiersync reload` would send it a SIGHUP that terminates the process."""
    import subprocess
    import sys

    from tests.helpers import ROOT

    source, target, config = _node(tmp_path)
    log = tmp_path / "embedded.log"
    with open(log, "wb") as out:
        embedded = subprocess.Popen([sys.executable, "-c", EMBEDDED, str(config)], cwd=ROOT, stdout=out, stderr=out)
    try:
        _exec(source, "INSERT INTO t VALUES (1)")
        wait_until(lambda: _rows(target, "SELECT id FROM t") == [(1,)], log)  # running
        out = cli("reload", "--config", str(config), "--timeout", "5", expect=None).output
        time.sleep(0.5)
        assert embedded.poll() is None, f"the process ended ({embedded.returncode}) after: {out}"
        assert "no running node county-110101 found" in out
    finally:
        embedded.kill()
        embedded.wait(timeout=60)
