"""Nothing lost, nothing doubled: out-of-order commits, kill -9 of the engine, database restarts."""

from __future__ import annotations

import random
import threading
import time

import psycopg
import pytest

from tests.helpers import (
    AUDIT_DDL,
    assert_mirror_and_history,
    install_triggers,
    kill_9_rounds,
    mirror_and_history,
    pg_exec,
    pg_rows,
    run_once,
    spawn_engine,
    write_node,
)

pytestmark = pytest.mark.postgres

DDL = "CREATE TABLE item (id integer PRIMARY KEY, label text NOT NULL, qty integer NOT NULL, note text)"
HISTORY_DDL = ("CREATE TABLE item_history (hid bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, id integer, "
               "label text, qty integer, note text, change_op text, captured_at timestamptz, change_seq bigint)")


@pytest.fixture
def two_pipelines(tmp_path, pg_databases):
    """One source table replicated twice: mirrored, and appended as history (which shows every change once)."""
    source, target = pg_databases
    pg_exec(source, DDL)
    pg_exec(target, DDL, HISTORY_DDL)
    config = write_node(tmp_path / "node.yaml", {"src": source, "dst": target}, mirror_and_history())
    install_triggers(config, "mirror", "history")
    pg_exec(source, *AUDIT_DDL)
    return config, source, target


def assert_in_sync(source: str, target: str) -> None:
    assert_mirror_and_history(source, target)
    assert pg_rows(source, "SELECT count(*) FROM tiersync.tiersync_change_log") == [(0,)]


def test_long_transaction_committing_last_is_not_skipped(two_pipelines):
    config, source, target = two_pipelines
    long = psycopg.connect(source)
    pg_exec(source, "INSERT INTO item VALUES (1, 'before', 1, NULL)")
    long.execute("INSERT INTO item VALUES (2, 'long transaction', 2, NULL)")  # takes a low change-log id…
    long.execute("UPDATE item SET qty = 20 WHERE id = 1")  # …and holds row 1
    for i in range(3, 40):  # others commit around it, with higher ids
        pg_exec(source, f"INSERT INTO item VALUES ({i}, 'other', {i}, NULL)")
    run_once(config)  # must not read past the open transaction's changes and skip them later
    long.commit()  # …commits last
    pg_exec(source, "UPDATE item SET qty = qty + 1 WHERE id = 1", "INSERT INTO item VALUES (40, 'after', 40, NULL)")
    run_once(config)
    long.close()
    assert_in_sync(source, target)
    assert pg_rows(target, "SELECT qty FROM item WHERE id = 1") == [(21,)]
    assert pg_rows(target, "SELECT label FROM item WHERE id = 2") == [("long transaction",)]


def test_batches_end_where_source_transactions_end(two_pipelines):
    """Through batches of 37: transactions of 100 and 200 rows commit whole (in parts inside one target
    transaction), and a backlog of ten 10-row transactions still moves in bounded batches of whole ones."""
    config, source, target = two_pipelines
    # at every target commit, the mirrored table holds whole source transactions only (multiples of 10 rows)
    pg_exec(target, "CREATE TABLE applied_in (txid bigint, id integer)",
            """CREATE FUNCTION whole() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN IF (SELECT count(*) FROM item) % 10 <> 0 THEN
            RAISE EXCEPTION 'part of a source transaction committed: % rows', (SELECT count(*) FROM item);
        END IF; RETURN NULL; END $$""",
            "CREATE CONSTRAINT TRIGGER whole AFTER INSERT ON item DEFERRABLE INITIALLY DEFERRED "
            "FOR EACH ROW EXECUTE FUNCTION whole()",
            """CREATE FUNCTION note_txid() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN INSERT INTO applied_in VALUES (txid_current(), NEW.id); RETURN NULL; END $$""",
            "CREATE TRIGGER note_txid AFTER INSERT ON item FOR EACH ROW EXECUTE FUNCTION note_txid()")
    pg_exec(source, "INSERT INTO item SELECT g, 'a', g, NULL FROM generate_series(1, 100) g",
            "INSERT INTO item SELECT g, 'b', g, NULL FROM generate_series(101, 300) g",
            *[f"INSERT INTO item SELECT g, 'c', g, NULL FROM generate_series({lo}, {lo + 9}) g"
              for lo in range(301, 401, 10)])
    run_once(config, "mirror")
    assert pg_rows(source, "SELECT * FROM item ORDER BY id") == pg_rows(target, "SELECT * FROM item ORDER BY id")
    sizes = [n for (n,) in pg_rows(target, "SELECT count(*) FROM applied_in GROUP BY txid ORDER BY min(id)")]
    # 100 alone (a full batch ends with it); 200 plus the small ones the batch holding its end has room for
    assert sizes[0] == 100 and 200 <= sizes[1] <= 200 + 37 and sum(sizes) == 400, sizes
    assert all(n % 10 == 0 for n in sizes) and all(n <= 37 for n in sizes[2:]) and len(sizes) >= 4, sizes


def test_commit_order_beats_transaction_id_order(two_pipelines):
    """A lower transaction id committing after a higher one on the same row must still be applied last."""
    config, source, target = two_pipelines
    pg_exec(source, "INSERT INTO item VALUES (1, 'initial', 0, NULL)")
    run_once(config)
    t2, t3, t1 = (psycopg.connect(source) for _ in range(3))
    for conn in (t2, t3, t1):  # transaction ids in this order: T2 < T3 < T1
        conn.execute("SELECT pg_current_xact_id()")
    t1.execute("UPDATE item SET label = 'by T1, committed first' WHERE id = 1")
    t1.commit()
    t2.execute("UPDATE item SET label = 'by T2, committed last' WHERE id = 1")
    t2.commit()
    run_once(config)  # T3 is still open
    t3.commit()
    run_once(config)
    for conn in (t1, t2, t3):
        conn.close()
    assert_in_sync(source, target)
    assert pg_rows(target, "SELECT label FROM item") == [("by T2, committed last",)]


class Workload(threading.Thread):
    """Random inserts, updates and deletes in small transactions until stopped."""

    def __init__(self, url: str, seed: int):
        super().__init__(daemon=True)
        self.url, self.random, self.stop = url, random.Random(seed), threading.Event()
        self.transactions = 0

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with psycopg.connect(self.url) as conn:
                    while not self.stop.is_set():
                        for _ in range(self.random.randint(1, 4)):
                            key = self.random.randint(1, 300)
                            action = self.random.random()
                            if action < 0.5:
                                conn.execute("INSERT INTO item VALUES (%s, %s, %s, %s) ON CONFLICT (id) DO UPDATE "
                                             "SET qty = item.qty + 1", (key, f"item {key}", key, "新" * (key % 7)))
                            elif action < 0.8:
                                conn.execute("UPDATE item SET qty = qty + 1, label = label || '.' WHERE id = %s",
                                             (key,))
                            else:
                                conn.execute("DELETE FROM item WHERE id = %s", (key,))
                        conn.commit()
                        self.transactions += 1
            except psycopg.OperationalError:
                time.sleep(0.2)  # the source is restarting


def kill_9_under_load(workload: Workload, config, log, restart, **rounds) -> None:
    """:func:`kill_9_rounds` while ``workload`` writes to the source."""
    workload.start()
    try:
        kill_9_rounds(config, log, restart, **rounds)
    finally:
        workload.stop.set()
        workload.join(10)
    assert workload.transactions > 50


def test_kill_9_and_database_restarts_lose_and_double_nothing(two_pipelines, pg_server, tmp_path):
    config, source, target = two_pipelines
    kill_9_under_load(Workload(source, seed=20261121), config, tmp_path / "engine.log", pg_server.restart)
    run_once(config)
    assert_in_sync(source, target)


def test_sigterm_stops_cleanly(two_pipelines, tmp_path):
    config, source, target = two_pipelines
    pg_exec(source, "INSERT INTO item SELECT g, 'x', g, NULL FROM generate_series(1, 500) g")
    engine = spawn_engine(config, log=tmp_path / "engine.log")
    deadline = time.time() + 30
    while time.time() < deadline and pg_rows(target, "SELECT count(*) FROM item")[0][0] < 500:
        time.sleep(0.1)
    engine.terminate()  # the history pipeline may still be behind the mirror: it stops where it is
    assert engine.wait(30) == 0, (tmp_path / "engine.log").read_text()
    run_once(config)  # a clean stop lost nothing: the next run finishes exactly
    assert_in_sync(source, target)


def test_kill_9_with_conflict_reject_finds_no_false_conflicts(tmp_path, pg_databases):
    """Replays after kill -9 and batches compacting many changes per key must never look like someone else's
    change: with nobody else writing to the target, conflict: reject sends nothing to dead letters."""
    source, target = pg_databases
    pg_exec(source, DDL)
    pg_exec(target, DDL, HISTORY_DDL)
    config = write_node(tmp_path / "node.yaml", {"src": source, "dst": target},
                        mirror_and_history([{"source": "item", "conflict": "reject"}]))
    install_triggers(config, "mirror", "history")
    pg_exec(source, *AUDIT_DDL)
    kill_9_under_load(Workload(source, seed=20261122), config, tmp_path / "engine.log", lambda: None, rounds=6)
    run_once(config)
    assert_in_sync(source, target)
    assert pg_rows(target, "SELECT error FROM tiersync.tiersync_dead_letter") == []
