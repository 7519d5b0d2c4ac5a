"""MariaDB → PostgreSQL by triggers: DBA commands, out-of-order commits, long transactions, kill -9, restarts."""

from __future__ import annotations

import random
import threading
import time

import pymysql
import pytest

from tests.helpers import (
    cli,
    install_triggers,
    kill_9_rounds,
    mirror_and_history,
    pg_exec,
    pg_rows,
    run_once,
    write_node,
)
from tests.mysql_helpers import my_exec, my_rows

pytestmark = [pytest.mark.postgres, pytest.mark.mariadb]

MY_DDL = ("CREATE TABLE item (id int PRIMARY KEY, label varchar(200) NOT NULL, qty int NOT NULL, note text) "
          "CHARSET utf8mb4")
PG_DDL = "CREATE TABLE item (id integer PRIMARY KEY, label text NOT NULL, qty integer NOT NULL, note text)"
PG_HISTORY_DDL = ("CREATE TABLE item_history (hid bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, id integer, "
                  "label text, qty integer, note text, change_op text, captured_at timestamptz, change_seq bigint)")
# the test's own witness of every committed change-log row, kept after tiersync purges the log
WITNESS_DDL = [
    "CREATE TABLE committed_change (id bigint PRIMARY KEY)",
    "CREATE TRIGGER witness AFTER INSERT ON tiersync_change_log FOR EACH ROW "
    "INSERT INTO committed_change VALUES (NEW.id)",
]


def maria_connect(url: str):
    from connectors.mysql.connection import connect_args

    args = connect_args(url)
    return pymysql.connect(host=args["host"], port=args["port"], user="root", database=args["database"],
                           charset="utf8mb4", autocommit=False)


@pytest.fixture
def maria_to_pg(tmp_path, maria_databases, pg_databases):
    source, _ = maria_databases
    _, target = pg_databases
    my_exec(source, MY_DDL)
    pg_exec(target, PG_DDL, PG_HISTORY_DDL)
    config = write_node(tmp_path / "node.yaml", {"src": source, "dst": target},
                        mirror_and_history(mirror_mappings=[{"source": "item", "target": "public.item"}]))
    install_triggers(config, "mirror", "history")
    my_exec(source, *WITNESS_DDL)
    return config, source, target


def assert_in_sync(source: str, target: str) -> None:
    history = [r[0] for r in pg_rows(target, "SELECT change_seq FROM item_history ORDER BY change_seq")]
    committed = [r[0] for r in my_rows(source, "SELECT id FROM committed_change ORDER BY id")]
    assert len(history) == len(set(history)), "a change was applied twice"
    missing = sorted(set(committed) - set(history))
    assert not missing, f"{len(missing)} committed changes never applied: {missing[:50]}"
    assert history == committed
    mine, theirs = set(my_rows(source, "SELECT * FROM item")), set(pg_rows(target, "SELECT * FROM item"))
    assert mine == theirs, f"only in the source: {sorted(mine - theirs)[:20]}; only in the target: " \
                           f"{sorted(theirs - mine)[:20]}"


def test_dba_commands(tmp_path, maria_databases, pg_databases):
    source, _ = maria_databases
    _, target = pg_databases
    my_exec(source, MY_DDL)
    pg_exec(target, PG_DDL)
    config = write_node(tmp_path / "node.yaml", {"src": source, "dst": target}, [
        {"name": "p", "source": {"database": "src", "tables": ["item"]}, "target": {"database": "dst"},
         "mappings": [{"source": "item", "target": "public.item"}]}])
    sql = cli("triggers", "sql", "--config", str(config), "--pipeline", "p").output
    assert "CREATE TRIGGER" in sql and "@tiersync_origin" in sql and "JSON_OBJECT" in sql
    assert my_rows(source, "SELECT count(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE()") \
        == [(0,)], "sql only prints"
    cli("triggers", "install", "--config", str(config), "--pipeline", "p")
    cli("triggers", "install", "--config", str(config), "--pipeline", "p")  # again: idempotent
    my_exec(source, "INSERT INTO item VALUES (1, 'a', 1, NULL), (2, 'b', 2, NULL)")
    status = cli("triggers", "status", "--config", str(config), "--pipeline", "p").output
    assert "item" in status and "2" in status
    run_once(config)
    assert pg_rows(target, "SELECT id, label FROM item ORDER BY id") == [(1, "a"), (2, "b")]
    my_exec(source, "INSERT INTO item VALUES (3, 'c', 3, NULL)")
    cli("triggers", "uninstall", "--config", str(config), "--pipeline", "p", expect=1)  # a change is pending
    run_once(config)
    cli("triggers", "uninstall", "--config", str(config), "--pipeline", "p")  # nothing pending: no --force
    assert my_rows(source, "SELECT count(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE()") \
        == [(0,)]
    assert my_rows(source, "SELECT count(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
                           "AND TABLE_NAME LIKE 'tiersync%%'") == [(0,)]


def test_maria_to_postgres_once(maria_to_pg):
    config, source, target = maria_to_pg
    my_exec(source, *[f"INSERT INTO item VALUES ({i}, 'item {i}', {i}, {'NULL' if i % 3 else repr('县 😀')})"
                      for i in range(1, 200)],
            "UPDATE item SET qty = qty * 10 WHERE id % 7 = 0", "DELETE FROM item WHERE id % 11 = 0",
            "UPDATE item SET id = id + 1000 WHERE id = 5", "UPDATE item SET qty = qty WHERE id = 1")
    run_once(config)
    assert_in_sync(source, target)
    assert pg_rows(target, "SELECT note FROM item WHERE id = 3") == [("县 😀",)]
    # acknowledged rows are purged (all but the newest, which keeps AUTO_INCREMENT ahead)
    assert my_rows(source, "SELECT count(*) FROM tiersync_change_log") == [(1,)]


def test_long_transaction_with_a_low_id_committing_last_is_not_skipped(maria_to_pg):
    config, source, target = maria_to_pg
    my_exec(source, "INSERT INTO item VALUES (1, 'before', 1, NULL)")
    long = maria_connect(source)
    with long.cursor() as cur:
        cur.execute("INSERT INTO item VALUES (2, 'long transaction', 2, NULL)")  # takes a low change-log id…
        cur.execute("UPDATE item SET qty = 20 WHERE id = 1")  # …and holds row 1
    for i in range(3, 40):  # others commit around it, with higher ids
        my_exec(source, f"INSERT INTO item VALUES ({i}, 'other', {i}, NULL)")
    run_once(config)  # reads past the open transaction's ids, holding them open
    assert pg_rows(target, "SELECT count(*) FROM item") == [(38,)]
    checkpoint = cli("checkpoint", "show", "--config", str(config), "--pipeline", "mirror").output
    assert checkpoint.startswith("mylog:") and checkpoint.strip().split("|")[1], checkpoint  # open gaps kept
    long.commit()  # …commits last
    my_exec(source, "UPDATE item SET qty = qty + 1 WHERE id = 1", "INSERT INTO item VALUES (40, 'after', 40, NULL)")
    run_once(config)
    long.close()
    assert_in_sync(source, target)
    assert pg_rows(target, "SELECT qty FROM item WHERE id = 1") == [(21,)]
    assert pg_rows(target, "SELECT label FROM item WHERE id = 2") == [("long transaction",)]


def test_rolled_back_ids_are_closed(maria_to_pg):
    """Ids a rolled-back transaction took never commit: once it has ended they stop being held open."""
    config, source, target = maria_to_pg
    doomed = maria_connect(source)
    with doomed.cursor() as cur:
        cur.execute("INSERT INTO item VALUES (1, 'rolled back', 1, NULL)")
    my_exec(source, "INSERT INTO item VALUES (2, 'kept', 2, NULL)")
    run_once(config, "mirror")
    assert "|" in cli("checkpoint", "show", "--config", str(config), "--pipeline", "mirror").output
    doomed.rollback()
    doomed.close()
    for i in range(3, 6):
        my_exec(source, f"INSERT INTO item VALUES ({i}, 'later', {i}, NULL)")
        run_once(config, "mirror")
    checkpoint = cli("checkpoint", "show", "--config", str(config), "--pipeline", "mirror").output.strip()
    assert checkpoint.endswith("|"), f"the rolled-back id is still held open: {checkpoint}"
    assert pg_rows(target, "SELECT id FROM item ORDER BY id") == [(2,), (3,), (4,), (5,)]


def test_commit_order_beats_id_order_on_one_row(maria_to_pg):
    config, source, target = maria_to_pg
    my_exec(source, "INSERT INTO item VALUES (1, 'initial', 0, NULL)")
    run_once(config)
    t1, t2 = maria_connect(source), maria_connect(source)
    with t1.cursor() as c1, t2.cursor() as c2:
        c1.execute("INSERT INTO item VALUES (7, 'low id, committed after', 0, NULL)")  # t1 takes the lower id
        c2.execute("UPDATE item SET label = 'by t2' WHERE id = 1")
        t2.commit()
        c1.execute("UPDATE item SET label = 'by t1, committed last' WHERE id = 1")  # waits for nothing now
    run_once(config)  # t1 is still open
    t1.commit()
    run_once(config)
    t1.close()
    t2.close()
    assert_in_sync(source, target)
    assert pg_rows(target, "SELECT label FROM item WHERE id = 1") == [("by t1, committed last",)]


class MariaWorkload(threading.Thread):
    """Random inserts, updates, deletes and key updates in small transactions until stopped."""

    def __init__(self, url: str, seed: int, keys: int = 300):
        super().__init__(daemon=True)
        self.url, self.random, self.stop, self.keys = url, random.Random(seed), threading.Event(), keys
        self.transactions = 0

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                conn = maria_connect(self.url)
                with conn.cursor() as cur:
                    while not self.stop.is_set():
                        for _ in range(self.random.randint(1, 4)):
                            key = self.random.randint(1, self.keys)
                            action = self.random.random()
                            if action < 0.5:
                                cur.execute("INSERT INTO item VALUES (%s, %s, %s, %s) ON DUPLICATE KEY UPDATE "
                                            "qty = qty + 1", (key, f"item {key}", key, "新" * (key % 7)))
                            elif action < 0.8:
                                cur.execute("UPDATE item SET qty = qty + 1, label = CONCAT(label, '.') "
                                            "WHERE id = %s", (key,))
                            elif action < 0.9:
                                cur.execute("UPDATE IGNORE item SET id = %s WHERE id = %s",
                                            (self.random.randint(1, self.keys), key))
                            else:
                                cur.execute("DELETE FROM item WHERE id = %s", (key,))
                        if self.random.random() < 0.1:
                            conn.rollback()
                        else:
                            conn.commit()
                            self.transactions += 1
            except pymysql.Error:
                time.sleep(0.2)  # a deadlock, or the server is restarting: start a new connection


def test_kill_9_and_a_mariadb_restart_lose_and_double_nothing(maria_to_pg, maria_server, tmp_path):
    config, source, target = maria_to_pg
    workloads = [MariaWorkload(source, seed) for seed in (1, 2, 3)]
    for workload in workloads:
        workload.start()
    try:
        kill_9_rounds(config, tmp_path / "engine.log", maria_server.restart)
    finally:
        for workload in workloads:
            workload.stop.set()
        for workload in workloads:
            workload.join(10)
    assert sum(w.transactions for w in workloads) > 50
    run_once(config)
    assert_in_sync(source, target)


def test_relay_through_mariadb_sends_no_echo(tmp_path, pg_databases, maria_databases):
    """county (PostgreSQL) → city (MariaDB) by one node, city → county by another: what came from the county
    is marked as the county's by the apply session and not sent back; the city's own changes are."""
    county, _ = pg_databases
    city, _ = maria_databases
    pg_exec(county, "CREATE TABLE item (id integer PRIMARY KEY, label text NOT NULL, qty integer NOT NULL, note text)",
            "CREATE TABLE from_city (hid bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, id integer, label text, "
            "qty integer, note text, origin text)")
    my_exec(city, MY_DDL)
    up = write_node(tmp_path / "county.yaml", {"county": county, "city": city}, [
        {"name": "up", "source": {"database": "county", "tables": ["item"]},
         "target": {"database": "city", "node": "city-110100"}, "mappings": [{"source": "item", "target": "item"}]}],
        node_id="county-110101")
    down = write_node(tmp_path / "city.yaml", {"county": county, "city": city}, [
        {"name": "down", "source": {"database": "city", "tables": ["item"]},
         "target": {"database": "county", "node": "county-110101", "mode": "append"},
         "mappings": [{"source": "item", "target": "public.from_city", "metadata": {"origin": "origin"}}]}],
        node_id="city-110100")
    cli("triggers", "install", "--config", str(up), "--pipeline", "up")
    cli("triggers", "install", "--config", str(down), "--pipeline", "down")
    pg_exec(county, "INSERT INTO item SELECT g, 'county ' || g, g, NULL FROM generate_series(1, 20) g")
    run_once(up)
    assert my_rows(city, "SELECT count(*) FROM item") == [(20,)]
    assert my_rows(city, "SELECT DISTINCT origin FROM tiersync_apply_origin") == [("county-110101",)]
    run_once(down)
    assert pg_rows(county, "SELECT count(*) FROM from_city") == [(0,)], "the county's own changes came back"
    my_exec(city, "INSERT INTO item VALUES (100, 'city', 1, NULL)", "UPDATE item SET qty = 7 WHERE id = 3")
    run_once(down)
    assert pg_rows(county, "SELECT id, qty, origin FROM from_city ORDER BY hid") == [
        (100, 1, "city-110100"), (3, 7, "city-110100")]
