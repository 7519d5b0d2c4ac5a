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


def bundle_keys(tmp: Path, a: str, b: str, cipher: str = "aes-256-gcm") -> dict[str, dict]:
    """Each node's key settings for its bundle link to the other, made with `tiersync bundle keygen`."""
    from tests.helpers import cli

    keys = tmp / "keys"
    keys.mkdir(exist_ok=True)
    secret = keys / f"{a}~{b}.secret"
    cli("bundle", "keygen", "--out", str(keys / f"{a}~{b}-{a}"), "--secret", str(secret), "--cipher", cipher)
    cli("bundle", "keygen", "--out", str(keys / f"{a}~{b}-{b}"))
    return {node: {"cipher": cipher, "bundle_key_file": str(secret), "signing_key": str(keys / f"{a}~{b}-{node}.key"),
                   "peer_public_key": str(keys / f"{a}~{b}-{other}.pub")} for node, other in ((a, b), (b, a))}


def directory_links(tmp: Path, a: str, b: str) -> tuple[dict, dict]:
    """The settings of a directory link between nodes ``a`` and ``b``: a's link to b, b's link to a."""
    keys = bundle_keys(tmp, a, b)
    there, back = str(tmp / f"{a}~{b}"), str(tmp / f"{b}~{a}")
    return ({"transport": "directory", **keys[a], "directory": there, "watch": back},
            {"transport": "directory", **keys[b], "directory": back, "watch": there})


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


COUNTY_ENTERPRISE = "CREATE TABLE enterprise (id INTEGER PRIMARY KEY, name TEXT, region TEXT)"
CITY_QY = "CREATE TABLE qy_jbxx (qyid INTEGER PRIMARY KEY, qymc TEXT, xzqh TEXT)"
UP_ROUTE = {"key": ["qyid"], "up": True}


def county_sender(tmp_path, link: dict, **capture) -> Path:
    """county-110101 sending its enterprise table (id, name) up to city-110100 as qy_jbxx (qyid, qymc) over
    ``link`` (the parent link's settings), SQLite databases in ``tmp_path``; ``capture``: capture_out options."""
    return node_file(
        tmp_path / "county.yaml", {"id": "county-110101", "tier": "county", "region": "110101",
                                   "parent": "city-110100"},
        {"biz": sqlite_db(tmp_path / "county.db", "CREATE TABLE enterprise (id INTEGER PRIMARY KEY, name TEXT)"),
         "x": f"sqlite:///{tmp_path}/county-x.db"},
        {"database": "x", "poll_interval": 0.05, "tables": {"qy_jbxx": UP_ROUTE},
         "links": {"city-110100": {"role": "parent", **link}}},
        [capture_out("biz", "x", "enterprise", "qy_jbxx", {"id": "qyid", "name": "qymc"}, **capture)])


def county_city(tmp_path, exchange_urls: tuple[str, str] | None = None, **exchange_extra):
    """county-110101 → city-110100 over exchange-db (10 changes per transport batch), SQLite business databases
    in ``tmp_path``, exchange databases there too unless ``exchange_urls`` (county's, city's) names others;
    enterprise rows (:func:`insert_enterprises`) go up into the city's qy_jbxx."""
    county_x, city_x = exchange_urls or (f"sqlite:///{tmp_path}/county-x.db", f"sqlite:///{tmp_path}/city-x.db")
    county = node_file(tmp_path / "county.yaml", {"id": "county-110101", "tier": "county", "region": "110101",
                                                  "parent": "city-110100"},
                       {"biz": sqlite_db(tmp_path / "county.db", COUNTY_ENTERPRISE), "x": county_x},
                       {"database": "x", "poll_interval": 0.1, "tables": {"qy_jbxx": UP_ROUTE},
                        "links": {"city-110100": {"role": "parent", "transport": "exchange-db", "inbox": city_x,
                                                  "batch_size": 10}}, **exchange_extra},
                       [capture_out("biz", "x", "enterprise", "qy_jbxx", {"id": "qyid", "name": "qymc",
                                                                           "region": "xzqh"})])
    city = node_file(tmp_path / "city.yaml", {"id": "city-110100", "tier": "city", "region": "110100"},
                     {"biz": sqlite_db(tmp_path / "city.db", CITY_QY), "x": city_x},
                     {"database": "x", "poll_interval": 0.1, "tables": {"qy_jbxx": UP_ROUTE},
                      "links": {"county-110101": {"role": "child", "region": "110101", "transport": "exchange-db",
                                                  "inbox": county_x}}, **exchange_extra},
                     [inbox_in("x", "biz", "qy_jbxx", "qy_jbxx")])
    from tests.helpers import cli

    cli("triggers", "install", "--config", str(county), "--pipeline", "enterprise-out")
    return county, city


def insert_enterprises(tmp_path, ids) -> None:
    with sqlite3.connect(tmp_path / "county.db") as conn:
        conn.executemany("INSERT INTO enterprise VALUES (?, ?, '110101')", [(i, f"企业{i}") for i in ids])


def set_exchange(config, **values) -> None:
    """Change keys of the node file's exchange section."""
    doc = yaml.safe_load(config.read_text(encoding="utf-8"))
    doc["exchange"].update(values)
    config.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")


def sqlite_copy(source: Path, target: Path) -> None:
    """Copy a SQLite database consistently (the backup API: committed pages, WAL included), onto ``target``
    whether it exists or not — a backup taken, or one restored over the live file."""
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
