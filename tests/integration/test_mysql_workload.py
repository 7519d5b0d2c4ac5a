"""A minute of concurrent writes to three tables with foreign keys, from four connections, replicated by
triggers MariaDB → PostgreSQL and PostgreSQL → MariaDB while the engine is killed -9 at random points;
afterwards source and target are equal row for row."""

from __future__ import annotations

import random
import threading
import time

import psycopg
import pymysql
import pytest

from tests.helpers import cli, pg_exec, pg_rows, run_once, spawn_engine, write_node
from tests.mysql_helpers import my_exec, my_rows

pytestmark = [pytest.mark.postgres, pytest.mark.mariadb, pytest.mark.slow]

SECONDS = 65
TABLES = ["customer", "orders", "order_line"]
MY_DDL = [
    "CREATE TABLE customer (id int PRIMARY KEY, name varchar(50) NOT NULL, city varchar(20)) CHARSET utf8mb4",
    "CREATE TABLE orders (id int PRIMARY KEY, customer_id int NOT NULL, status varchar(10) NOT NULL, "
    "total decimal(12,2) NOT NULL, FOREIGN KEY (customer_id) REFERENCES customer (id)) CHARSET utf8mb4",
    "CREATE TABLE order_line (id int PRIMARY KEY, order_id int NOT NULL, sku varchar(20) NOT NULL, qty int NOT NULL, "
    "FOREIGN KEY (order_id) REFERENCES orders (id)) CHARSET utf8mb4",
]
PG_DDL = [
    "CREATE TABLE customer (id integer PRIMARY KEY, name text NOT NULL, city text)",
    "CREATE TABLE orders (id integer PRIMARY KEY, customer_id integer NOT NULL REFERENCES customer (id), "
    "status text NOT NULL, total numeric(12,2) NOT NULL)",
    "CREATE TABLE order_line (id integer PRIMARY KEY, order_id integer NOT NULL REFERENCES orders (id), "
    "sku text NOT NULL, qty integer NOT NULL)",
]
SELECTS = {t: f"SELECT * FROM {t} ORDER BY id" for t in TABLES}


class Writer(threading.Thread):
    """Random business transactions on one connection; refused statements are part of the workload."""

    def __init__(self, connect, errors: tuple, seed: int, upsert_customer: str):
        super().__init__(daemon=True)
        self.connect, self.errors, self.random = connect, errors, random.Random(seed)
        self.upsert_customer = upsert_customer
        self.stop = threading.Event()
        self.commits = 0

    def _statement(self, cur) -> None:
        r, pick = self.random.random(), self.random.randint
        if r < 0.15:
            cur.execute(self.upsert_customer,
                        (pick(1, 60), f"客户{pick(1, 999)}", self.random.choice(["北京", "天津"])))
        elif r < 0.35:
            cur.execute("INSERT INTO orders VALUES (%s, %s, 'new', %s)",
                        (pick(1, 400), pick(1, 60), pick(1, 99999) / 100))
        elif r < 0.6:
            cur.execute("INSERT INTO order_line VALUES (%s, %s, %s, %s)",
                        (pick(1, 1500), pick(1, 400), f"SKU-{pick(1, 50)}", pick(1, 9)))
        elif r < 0.72:
            cur.execute("UPDATE orders SET status = %s, total = total + 1 WHERE id = %s",
                        (self.random.choice(["paid", "sent", "done"]), pick(1, 400)))
        elif r < 0.8:
            cur.execute("UPDATE order_line SET qty = qty + 1 WHERE order_id = %s", (pick(1, 400),))
        elif r < 0.86:
            cur.execute("UPDATE order_line SET id = %s WHERE id = %s", (pick(1, 1500), pick(1, 1500)))  # key update
        elif r < 0.94:
            cur.execute("DELETE FROM order_line WHERE id = %s", (pick(1, 1500),))
        elif r < 0.98:
            cur.execute("DELETE FROM orders WHERE id = %s", (pick(1, 400),))  # refused while it has lines
        else:
            cur.execute("DELETE FROM customer WHERE id = %s", (pick(1, 60),))

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                conn = self.connect()
            except self.errors:
                time.sleep(0.2)
                continue
            try:
                while not self.stop.is_set():
                    cur = conn.cursor()
                    for _ in range(self.random.randint(1, 5)):
                        try:
                            if isinstance(conn, psycopg.Connection):
                                with conn.transaction():  # a savepoint: a refused statement leaves the rest
                                    self._statement(cur)
                            else:
                                self._statement(cur)
                        except self.errors as exc:
                            if _fatal(exc):
                                raise
                    conn.commit()
                    self.commits += 1
            except self.errors:
                time.sleep(0.05)  # deadlock or lost connection: the transaction is gone, start again
            finally:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001 - already broken
                    pass


def _fatal(exc: Exception) -> bool:
    """Errors that end the transaction (deadlock, lost connection) rather than just the statement."""
    if isinstance(exc, pymysql.err.OperationalError):
        return True
    return isinstance(exc, (psycopg.OperationalError, psycopg.errors.DeadlockDetected))


def _run_with_kills(config, writers, tmp_path) -> None:
    for writer in writers:
        writer.start()
    chance = random.Random(5)
    deadline = time.time() + SECONDS
    log = tmp_path / "engine.log"
    try:
        while time.time() < deadline:
            engine = spawn_engine(config, log=log)
            time.sleep(chance.uniform(2.0, 8.0))
            engine.kill()  # SIGKILL at a random point
            engine.wait()
    finally:
        for writer in writers:
            writer.stop.set()
        for writer in writers:
            writer.join(30)
    assert sum(w.commits for w in writers) > 200
    run_once(config)


def _config(tmp_path, source: str, target: str, qualify: str = ""):
    return write_node(tmp_path / "node.yaml", {"src": source, "dst": target}, [
        {"name": "shop", "source": {"database": "src", "tables": TABLES}, "target": {"database": "dst"},
         "batch_size": 200, "poll_interval": 0.05,
         "mappings": [{"source": t, "target": f"{qualify}{t}"} for t in TABLES]}])


def test_mariadb_to_postgres_under_concurrent_writes_and_kill_9(tmp_path, maria_databases, pg_databases):
    source, _ = maria_databases
    _, target = pg_databases
    my_exec(source, *MY_DDL)
    pg_exec(target, *PG_DDL)
    config = _config(tmp_path, source, target, "public.")
    cli("triggers", "install", "--config", str(config), "--pipeline", "shop")
    upsert = "INSERT INTO customer VALUES (%s, %s, %s) ON DUPLICATE KEY UPDATE name = VALUES(name), city = VALUES(city)"
    writers = [Writer(lambda: pymysql.connect(**_args(source)), (pymysql.Error,), seed, upsert)
               for seed in range(4)]
    _run_with_kills(config, writers, tmp_path)
    for table in TABLES:
        assert my_rows(source, SELECTS[table]) == pg_rows(target, SELECTS[table]), table
    assert my_rows(source, "SELECT count(*) FROM order_line")[0][0] > 100


def test_postgres_to_mariadb_under_concurrent_writes_and_kill_9(tmp_path, pg_databases, maria_databases):
    source, _ = pg_databases
    target, _ = maria_databases
    pg_exec(source, *PG_DDL)
    my_exec(target, *MY_DDL)
    config = _config(tmp_path, source, target)
    cli("triggers", "install", "--config", str(config), "--pipeline", "shop")
    upsert = ("INSERT INTO customer VALUES (%s, %s, %s) ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, "
              "city = EXCLUDED.city")
    writers = [Writer(lambda: psycopg.connect(source), (psycopg.Error,), seed, upsert) for seed in range(4)]
    _run_with_kills(config, writers, tmp_path)
    for table in TABLES:
        assert pg_rows(source, SELECTS[table]) == my_rows(target, SELECTS[table]), table
    assert pg_rows(source, "SELECT count(*) FROM order_line")[0][0] > 100


def _args(url: str) -> dict:
    from connectors.mysql.connection import connect_args

    args = connect_args(url)
    return {"host": args["host"], "port": args["port"], "user": args["user"], "password": args["password"],
            "database": args["database"], "charset": "utf8mb4", "autocommit": False}
