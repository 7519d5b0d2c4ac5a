"""Small helpers shared by the tests: node files, running the CLI, reading tables."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml
from click.testing import CliRunner

from engine.config import load_config
from engine.node import run_node
from ops.cli import main

ROOT = Path(__file__).resolve().parents[1]


def write_node(path: Path, databases: dict[str, str], pipelines: list[dict], node_id: str = "county-110101") -> Path:
    doc = {
        "node": {"id": node_id, "tier": "county", "region": "110101"},
        "databases": {name: {"url": url} for name, url in databases.items()},
        "pipelines": pipelines,
    }
    path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def cli(*args: str, expect: int | None = 0):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    if expect is not None:
        assert result.exit_code == expect, result.output
    return result


def run_once(config_path: Path, pipeline: str | None = None) -> None:
    config = load_config(config_path)
    names = [pipeline] if pipeline else [p.name for p in config.pipelines]
    failures = run_node(config, names, once=True, stop=threading.Event())
    assert not failures, failures


def spawn_engine(config_path: Path, *extra: str, log: Path | None = None) -> subprocess.Popen:
    """The engine as users run it: a separate process."""
    out = open(log, "ab") if log else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "ops", "--log-level", "WARNING", "run", "--config", str(config_path),
                             *extra], cwd=ROOT, stdout=out, stderr=out)


def wait_until(condition, log: Path, limit: float = 60.0, every: float = 0.1) -> None:
    """Wait until ``condition()`` holds; fail with the engine's ``log`` after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(every)
    raise AssertionError(f"condition not met; engine log:\n{log.read_text() if log.exists() else ''}")


def pg_rows(url: str, sql: str, params=None) -> list[tuple]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def pg_exec(url: str, *statements: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def as_json(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


# ------------------------------------------------------------------ one table replicated twice: mirror and history

def mirror_and_history(mirror_mappings: list[dict] | None = None) -> list[dict]:
    """Table ``item`` of database ``src`` replicated twice into ``dst``: mirrored (pipeline ``mirror``), and appended
    as history to ``item_history`` with op, capture time and change sequence (pipeline ``history``), which shows
    every change once."""
    mirror = {"name": "mirror", "source": {"database": "src", "tables": ["item"]}, "target": {"database": "dst"},
              "batch_size": 37, "poll_interval": 0.05}
    if mirror_mappings:
        mirror["mappings"] = mirror_mappings
    return [mirror,
            {"name": "history", "source": {"database": "src", "tables": ["item"]},
             "target": {"database": "dst", "mode": "append"}, "batch_size": 53, "poll_interval": 0.05,
             "mappings": [{"source": "item", "target": "item_history",
                           "metadata": {"op": "change_op", "captured_at": "captured_at", "seq": "change_seq"}}]}]


def install_triggers(config: Path, *pipelines: str) -> None:
    for name in pipelines:
        cli("triggers", "install", "--config", str(config), "--pipeline", name)


# the test's own witness of every committed change-log row of a PostgreSQL source, kept after tiersync purges the log
AUDIT_DDL = [
    "CREATE TABLE committed_change (id bigint PRIMARY KEY)",
    """CREATE FUNCTION witness() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN INSERT INTO committed_change VALUES (NEW.id); RETURN NULL; END $$""",
    "CREATE TRIGGER witness AFTER INSERT ON tiersync.tiersync_change_log FOR EACH ROW EXECUTE FUNCTION witness()",
]


def assert_mirror_and_history(source: str, target: str, target_rows=pg_rows) -> None:
    """PostgreSQL ``source``'s ``item`` is mirrored exactly, and the history holds every committed change once."""
    assert pg_rows(source, "SELECT * FROM item ORDER BY id") == target_rows(target, "SELECT * FROM item ORDER BY id")
    history = [r[0] for r in target_rows(target, "SELECT change_seq FROM item_history ORDER BY change_seq")]
    committed = [r[0] for r in pg_rows(source, "SELECT id FROM committed_change ORDER BY id")]
    assert len(history) == len(set(history)), "a change was applied twice"
    assert history == committed


def kill_9_rounds(config: Path, log: Path, restart, rounds: int = 8, restart_round: int = 3) -> None:
    """Start the engine and kill -9 it at random points, ``rounds`` times; in round ``restart_round`` the
    ``restart`` callable (a database restart) runs under the running engine, which must retry and resume."""
    chance = random.Random(7)
    for round_ in range(rounds):
        engine = spawn_engine(config, log=log)
        time.sleep(chance.uniform(0.3, 1.5))
        if round_ == restart_round:
            restart()
            time.sleep(chance.uniform(0.5, 1.0))
        engine.kill()  # SIGKILL: no clean shutdown
        engine.wait()


def kill_9_during_load(config: Path, target: str, log: Path, rounds: int, step: int) -> None:
    """Kill -9 the engine ``rounds`` times during a pipeline's initial load into PostgreSQL ``target``, each time
    once the load has copied ``step`` more rows; each kill must leave the load unfinished and further along."""
    copied = 0
    for _ in range(rounds):
        engine = spawn_engine(config, log=log)
        deadline = time.time() + 60
        while time.time() < deadline:
            progress = pg_rows(target, "SELECT rows, done FROM tiersync.tiersync_snapshot") \
                if pg_rows(target, "SELECT to_regclass('tiersync.tiersync_snapshot')")[0][0] else []
            if progress and progress[0][0] >= copied + step:
                break
            time.sleep(0.01)
        engine.kill()
        engine.wait()
        [(rows, done)] = pg_rows(target, "SELECT rows, done FROM tiersync.tiersync_snapshot")
        assert not done and rows > copied, "the load was not interrupted in the middle"
        copied = rows


def assert_acknowledge_does_not_wait_for_the_read(reader, reading_conn, position: str, read_size: int) -> None:
    """As the pipeline does: the next read runs on a prefetch thread while the last batch is acknowledged.

    The read is held inside its statement (a SQLite progress handler on ``reading_conn``); the acknowledgement,
    on another thread, must neither wait for it nor run on its connection.
    """
    inside, release = threading.Event(), threading.Event()
    prefetch = threading.Thread(target=lambda: reader.read(read_size), name="prefetch", daemon=True)

    def hold_the_read():
        if threading.current_thread() is prefetch and not release.is_set():
            inside.set()
            release.wait(60)
        return 0
    reading_conn.set_progress_handler(hold_the_read, 1)
    acked = threading.Event()

    def acknowledge():
        reader.acknowledge(position)
        acked.set()
    pipeline = threading.Thread(target=acknowledge, daemon=True)
    prefetch.start()
    try:
        assert inside.wait(60), "the read never started its statement"
        pipeline.start()
        assert acked.wait(30), "the acknowledgement waited for the read's connection"
    finally:
        release.set()
        prefetch.join(60)
        pipeline.join(60)
