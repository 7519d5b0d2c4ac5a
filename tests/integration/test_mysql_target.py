"""PostgreSQL → MariaDB by triggers: apply with checkpoints, dead letters, kill -9 of the engine."""

from __future__ import annotations

import random
import time

import psycopg
import pytest

from tests.helpers import (
    AUDIT_DDL,
    assert_mirror_and_history,
    cli,
    install_triggers,
    mirror_and_history,
    pg_exec,
    pg_rows,
    run_once,
    spawn_engine,
    write_node,
)
from tests.integration.test_postgres_crash import Workload
from tests.mysql_helpers import my_exec, my_rows

pytestmark = [pytest.mark.postgres, pytest.mark.mariadb]

PG_DDL = "CREATE TABLE item (id integer PRIMARY KEY, label text NOT NULL, qty integer NOT NULL, note text)"
MY_DDL = "CREATE TABLE item (id int PRIMARY KEY, label text NOT NULL, qty int NOT NULL, note text)"
MY_HISTORY_DDL = ("CREATE TABLE item_history (hid bigint AUTO_INCREMENT PRIMARY KEY, id int, label text, qty int, "
                  "note text, change_op varchar(1), captured_at datetime(6), change_seq bigint UNIQUE)")


@pytest.fixture
def pg_to_maria(tmp_path, pg_databases, maria_databases):
    source, _ = pg_databases
    target, _ = maria_databases
    pg_exec(source, PG_DDL)
    my_exec(target, MY_DDL, MY_HISTORY_DDL)
    config = write_node(tmp_path / "node.yaml", {"src": source, "dst": target}, mirror_and_history())
    install_triggers(config, "mirror", "history")
    pg_exec(source, *AUDIT_DDL)
    return config, source, target


def assert_in_sync(source: str, target: str) -> None:
    assert_mirror_and_history(source, target, target_rows=my_rows)


def test_postgres_to_mariadb_once(pg_to_maria):
    config, source, target = pg_to_maria
    pg_exec(source, "INSERT INTO item SELECT g, 'item ' || g, g, CASE WHEN g % 3 = 0 THEN '北京 😀' END "
                    "FROM generate_series(1, 500) g",
            "UPDATE item SET qty = qty * 10 WHERE id % 7 = 0", "DELETE FROM item WHERE id % 11 = 0",
            "UPDATE item SET id = id + 1000 WHERE id = 5")  # a key update: the old row goes
    run_once(config)
    assert_in_sync(source, target)
    assert my_rows(target, "SELECT note FROM item WHERE id = 3") == [("北京 😀",)]
    status = cli("status", "--config", str(config)).output
    assert "mirror" in status and "error" not in status
    assert "pglog:" in cli("checkpoint", "show", "--config", str(config), "--pipeline", "mirror").output


def test_rejected_rows_become_dead_letters_and_the_rest_applies(pg_to_maria):
    config, source, target = pg_to_maria
    my_exec(target, "ALTER TABLE item MODIFY label varchar(5) NOT NULL")  # the target is narrower
    pg_exec(source, "INSERT INTO item VALUES (1, 'ok', 1, NULL), (2, 'far too long for it', 2, NULL), "
                    "(3, 'fine', 3, NULL)")
    run_once(config, "mirror")
    assert my_rows(target, "SELECT id, label FROM item ORDER BY id") == [(1, "ok"), (3, "fine")]
    letters = cli("dead-letters", "--config", str(config), "--pipeline", "mirror").output
    assert "key=[2]" in letters and "too long" in letters.lower()
    run_once(config, "mirror")  # nothing is applied twice or lost on the next run
    assert my_rows(target, "SELECT count(*) FROM tiersync_dead_letter") == [(1,)]


def test_long_pg_transaction_then_kill_9_converges(pg_to_maria, tmp_path):
    config, source, target = pg_to_maria
    long = psycopg.connect(source)
    long.execute("INSERT INTO item VALUES (900, 'long transaction', 1, NULL)")
    workload = Workload(source, seed=4)
    workload.start()
    chance = random.Random(11)
    log = tmp_path / "engine.log"
    try:
        for round_ in range(6):
            engine = spawn_engine(config, log=log)
            time.sleep(chance.uniform(0.5, 2.0))
            if round_ == 2:
                long.commit()
            engine.kill()  # SIGKILL: no clean shutdown
            engine.wait()
    finally:
        workload.stop.set()
        workload.join(10)
        long.close()
    assert workload.transactions > 30
    run_once(config)
    assert_in_sync(source, target)


def test_mariadb_target_restart_mid_stream(pg_to_maria, maria_server, tmp_path):
    config, source, target = pg_to_maria
    workload = Workload(source, seed=9)
    workload.start()
    log = tmp_path / "engine.log"
    engine = spawn_engine(config, log=log)
    try:
        time.sleep(2)
        maria_server.kill()  # the target crashes under the running engine…
        time.sleep(1)
        maria_server.start()  # …and comes back: the engine retries from its checkpoint
        time.sleep(3)
    finally:
        workload.stop.set()
        workload.join(10)
    deadline = time.time() + 180  # the running engine catches up by itself (both pipelines)
    while time.time() < deadline:
        if pg_rows(source, "SELECT count(*) FROM committed_change") == \
                my_rows(target, "SELECT count(*) FROM item_history") and \
                pg_rows(source, "SELECT * FROM item ORDER BY id") == my_rows(target, "SELECT * FROM item ORDER BY id"):
            break
        time.sleep(0.5)
    engine.terminate()
    assert engine.wait(60) == 0, log.read_text()
    run_once(config)  # the history caught up above; the mirror may still be a batch or two behind
    assert_in_sync(source, target)
