"""Full loads from MariaDB (composite keys, writes during the copy, kill -9 mid-load) and into MariaDB."""

from __future__ import annotations

import threading

import pytest

from tests.helpers import cli, kill_9_during_load, pg_exec, pg_rows, run_once, write_node
from tests.mysql_helpers import _connect, my_exec, my_rows

pytestmark = [pytest.mark.postgres, pytest.mark.mariadb]

MY_DDL = ("CREATE TABLE item (region varchar(10), id int, label varchar(100) NOT NULL, qty int NOT NULL, "
          "PRIMARY KEY (region, id)) CHARSET utf8mb4")
PG_DDL = ("CREATE TABLE item_copy (region text, id integer, title text NOT NULL, qty integer NOT NULL, "
          "PRIMARY KEY (region, id))")
REGIONS = ["东城", "西城", "朝阳"]
ROWS = 6000
SAME = ("SELECT region, id, label, qty FROM item ORDER BY region, id",
        "SELECT region, id, title, qty FROM item_copy ORDER BY region, id")


@pytest.fixture
def loaded_maria(tmp_path, maria_databases, pg_databases):
    source, _ = maria_databases
    _, target = pg_databases
    my_exec(source, MY_DDL)
    conn = _connect(source)
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO item VALUES (%s, %s, %s, %s)",
                        [(REGIONS[i % 3], i, f"第{i}项", i % 10) for i in range(1, ROWS + 1)])
    conn.close()
    pg_exec(target, PG_DDL)
    config = write_node(tmp_path / "node.yaml", {"src": source, "dst": target}, [{
        "name": "load", "source": {"database": "src", "tables": ["item"]}, "target": {"database": "dst"},
        "batch_size": 500, "poll_interval": 0.05,
        "mappings": [{"source": "item", "target": "public.item_copy", "columns": {"label": "title"}}]}])
    return config, source, target


def _same(source: str, target: str) -> None:
    assert my_rows(source, SAME[0].replace("ORDER BY region, id", "")) and \
        sorted(my_rows(source, SAME[0])) == sorted(pg_rows(target, SAME[1]))


def test_snapshot_from_mariadb_with_writes_during_the_copy_converges(loaded_maria):
    config, source, target = loaded_maria
    cli("triggers", "install", "--config", str(config), "--pipeline", "load")  # capture starts before the copy
    stop = threading.Event()

    def write():
        conn = _connect(source)
        with conn.cursor() as cur:
            i = 0
            while not stop.is_set():
                i += 1
                cur.execute("UPDATE item SET qty = qty + 1 WHERE region = %s AND id = %s",
                            (REGIONS[i % 3], i * 37 % ROWS + 1))
                cur.execute("DELETE FROM item WHERE id = %s", (i * 101 % ROWS + 1,))
                cur.execute("INSERT IGNORE INTO item VALUES (%s, %s, 'new', 0)", (REGIONS[i % 3], ROWS + i))
        conn.close()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        output = cli("snapshot", "--config", str(config), "--pipeline", "load", "--chunk-rows", "700").output
    finally:
        stop.set()
        writer.join()
    assert ".item: " in output and "rows loaded" in output
    run_once(config)  # the stream replays what changed during the copy
    _same(source, target)


def test_kill_9_during_initial_load_from_mariadb_resumes(loaded_maria, tmp_path):
    config, source, target = loaded_maria
    config.write_text(config.read_text().replace("batch_size: 500", "batch_size: 100\n  initial_load: true"))
    cli("triggers", "install", "--config", str(config), "--pipeline", "load")
    kill_9_during_load(config, target, tmp_path / "engine.log", rounds=2, step=300)
    my_exec(source, "UPDATE item SET qty = -1 WHERE id % 1000 = 0", "DELETE FROM item WHERE id % 999 = 0")
    run_once(config)
    _same(source, target)


def test_reload_into_mariadb_repairs_drift_and_removes_extras(tmp_path, pg_databases, maria_databases):
    source, _ = pg_databases
    target, _ = maria_databases
    pg_exec(source, "CREATE TABLE item (region text, id integer, label text NOT NULL, qty integer NOT NULL, "
                    "PRIMARY KEY (region, id))",
            "INSERT INTO item SELECT (ARRAY['东城','西城','朝阳'])[g % 3 + 1], g, '第' || g || '项', g % 10 "
            "FROM generate_series(1, 3000) g")
    my_exec(target, MY_DDL)
    config = write_node(tmp_path / "node.yaml", {"src": source, "dst": target}, [{
        "name": "load", "source": {"database": "src", "tables": ["item"]}, "target": {"database": "dst"},
        "mappings": [{"source": "item", "target": "item"}]}])
    cli("triggers", "install", "--config", str(config), "--pipeline", "load")
    cli("snapshot", "--config", str(config), "--pipeline", "load", "--chunk-rows", "400")
    my_exec(target, "UPDATE item SET label = 'edited by hand' WHERE id < 50", "DELETE FROM item WHERE id < 20",
            "INSERT INTO item VALUES ('海淀', 999999, 'stray', 1), ('东城', 0, 'stray', 1)")
    output = cli("snapshot", "--config", str(config), "--pipeline", "load", "--chunk-rows", "400").output
    assert "2 extra target rows removed" in output
    query = "SELECT region, id, label, qty FROM item"
    assert sorted(pg_rows(source, query)) == sorted(my_rows(target, query))
