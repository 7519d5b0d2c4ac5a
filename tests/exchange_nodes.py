"""Building exchange networks for tests: node files with links and routes, and SQLite/PostgreSQL helpers."""

from __future__ import annotations

import random
import socket
import sqlite3
import time
from pathlib import Path

import yaml


def node_file(path: Path, node: dict, databases: dict[str, str], exchange: dict, pipelines: list[dict]) -> Path:
    doc = {"node": node, "databases": {n: {"url": u} for n, u in databases.items()}, "exchange": exchange,
           "pipelines": pipelines}
    path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def capture_out(database: str, exchange_db: str, table: str, to: str, columns: dict, **extra) -> dict:
    """A pipeline that captures ``table`` and queues its changes, mapped to exchange table ``to``."""
    return {"name": f"{table}-out", "source": {"database": database, "tables": [table]},
            "target": {"database": exchange_db, "outbox": True}, "poll_interval": 0.1,
            "mappings": [{"source": table, "target": to, "columns": columns}], **extra}


def inbox_in(exchange_db: str, database: str, table: str, to: str, columns: dict | None = None, name: str = "",
             drop: list | None = None, **extra) -> dict:
    """A pipeline that applies received changes of exchange table ``table`` into ``to``."""
    mapping = {"source": table, "target": to}
    if columns:
        mapping["columns"] = columns
    if drop:
        mapping["drop"] = drop
    return {"name": name or f"{table}-in", "source": {"database": exchange_db, "capture": "inbox", "tables": [table]},
            "target": {"database": database}, "poll_interval": 0.1, "mappings": [mapping], **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sqlite_db(path, *ddl) -> str:
    """A SQLite database at ``path`` with ``ddl`` run in it; its URL."""
    with sqlite3.connect(path) as conn:
        for statement in ddl:
            conn.execute(statement)
    return f"sqlite:///{path}"


def q(path, sql, params=()) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql, params).fetchall()


def kill_9_both_sides(sender: Path, receiver: Path, logs: Path, rounds: int, seed: int, run_for: tuple[float, float],
                      both: float, gap: float) -> None:
    """Run both nodes' engines and kill -9 them at random points, ``rounds`` times: after ``run_for`` seconds
    (uniform), both at once (chance ``both``) or one of them, then the other up to ``gap`` seconds later."""
    from tests.helpers import spawn_engine

    chance = random.Random(seed)
    for _ in range(rounds):
        engines = [spawn_engine(sender, log=logs / "county.log"), spawn_engine(receiver, log=logs / "city.log")]
        time.sleep(chance.uniform(*run_for))
        for engine in (engines if chance.random() < both else [chance.choice(engines)]):
            engine.kill()  # SIGKILL, mid-batch or mid-delivery
        time.sleep(chance.uniform(0, gap))
        for engine in engines:
            engine.kill()
            engine.wait()
