"""county → city over exchange-db on PostgreSQL, with kill -9 of the sending and the receiving node."""

from __future__ import annotations

import os
import random
import threading
import time

import psycopg
import pytest

from engine.config import load_config
from tests.exchange_nodes import capture_out, inbox_in, kill_9_both_sides, node_file
from tests.helpers import cli, pg_exec, pg_rows, run_once
from tests.integration.test_bundle import CITY, COUNTY, link_keys

pytestmark = pytest.mark.postgres

ENTERPRISE = "CREATE TABLE enterprise (id integer PRIMARY KEY, name text NOT NULL, region text, capital numeric(14,2))"
QY = "CREATE TABLE qy_jbxx (qyid integer PRIMARY KEY, qymc text NOT NULL, xzqh text, zczb numeric(14,2))"
HISTORY = ("CREATE TABLE qy_history (hid bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, qyid integer, qymc text, "
           "xzqh text, zczb numeric(14,2), op text, change_seq bigint UNIQUE, origin text)")
WITNESS = [  # every committed change-log row at the county, kept after tiersync purges the log
    "CREATE TABLE committed_change (id bigint PRIMARY KEY)",
    """CREATE FUNCTION witness() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN INSERT INTO committed_change VALUES (NEW.id); RETURN NULL; END $$""",
    "CREATE TRIGGER witness AFTER INSERT ON tiersync.tiersync_change_log FOR EACH ROW EXECUTE FUNCTION witness()",
]


@pytest.fixture
def county_city(tmp_path, pg_server):
    return county_and_city(tmp_path, pg_server)


def county_and_city(tmp_path, pg_server, county_link: dict | None = None, city_link: dict | None = None):
    """The two nodes on PostgreSQL; the link settings default to exchange-db into each other's exchange database."""
    tag = f"{os.getpid()}_{random.randrange(10**6)}"
    county_biz, county_x, city_x, city_biz = (pg_server.create_database(f"{n}_{tag}")
                                              for n in ("cbiz", "cx", "tx", "tbiz"))
    pg_exec(county_biz, ENTERPRISE)
    pg_exec(city_biz, QY, HISTORY)
    route = {"key": ["qyid"], "up": True}
    county = node_file(tmp_path / "county.yaml", {"id": "county-110101", "tier": "county", "region": "110101",
                                                  "parent": "city-110100"},
                       {"biz": county_biz, "x": county_x},
                       {"database": "x", "poll_interval": 0.05,
                        "links": {"city-110100": {"role": "parent", "batch_size": 40, **(county_link or {
                            "transport": "exchange-db", "inbox": city_x})}},
                        "tables": {"qy_jbxx": route}},
                       [capture_out("biz", "x", "enterprise", "qy_jbxx",
                                    {"id": "qyid", "name": "qymc", "region": "xzqh", "capital": "zczb"},
                                    batch_size=97)])
    city = node_file(tmp_path / "city.yaml", {"id": "city-110100", "tier": "city", "region": "110100"},
                     {"biz": city_biz, "x": city_x},
                     {"database": "x", "poll_interval": 0.05,
                      "links": {"county-110101": {"role": "child", "region": "110101", **(city_link or {
                          "transport": "exchange-db", "inbox": county_x})}},
                      "tables": {"qy_jbxx": route}},
                     [inbox_in("x", "biz", "qy_jbxx", "qy_jbxx", batch_size=61),
                      {"name": "history", "source": {"database": "x", "capture": "inbox", "tables": ["qy_jbxx"]},
                       "target": {"database": "biz", "mode": "append"}, "batch_size": 83, "poll_interval": 0.05,
                       "mappings": [{"source": "qy_jbxx", "target": "qy_history",
                                     "metadata": {"op": "op", "seq": "change_seq", "origin": "origin"}}]}])
    cli("triggers", "install", "--config", str(county), "--pipeline", "enterprise-out")
    pg_exec(county_biz, *WITNESS)
    return county, city, county_biz, city_biz


class Workload(threading.Thread):
    def __init__(self, url: str, seed: int):
        super().__init__(daemon=True)
        self.url, self.random, self.stop, self.transactions = url, random.Random(seed), threading.Event(), 0

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop.is_set():
                r, i = self.random.random(), self.random.randrange(1, 400)
                with conn.transaction():
                    if r < 0.5:
                        conn.execute("INSERT INTO enterprise VALUES (%s, %s, '110101', %s) ON CONFLICT (id) DO "
                                     "UPDATE SET name = excluded.name || '再'", (i, f"企业{i}", i * 1.25))
                    elif r < 0.8:
                        conn.execute("UPDATE enterprise SET capital = capital + 1 WHERE id BETWEEN %s AND %s",
                                     (i, i + 3))
                    else:
                        conn.execute("DELETE FROM enterprise WHERE id = %s", (i,))
                self.transactions += 1
                time.sleep(0.002)


def test_kill_9_of_sender_and_receiver_loses_and_doubles_nothing(county_city, tmp_path):
    kill_9_and_check(*county_city, tmp_path)


def test_kill_9_over_the_directory_transport(tmp_path, pg_server):
    """Bundles through directories: kill -9 while exporting, importing, writing or taking receipts."""
    keys = link_keys(tmp_path, volume_size=2048)
    up, down = str(tmp_path / "up"), str(tmp_path / "down")
    nodes = county_and_city(tmp_path, pg_server,
                            {"transport": "directory", **keys[COUNTY], "directory": up, "watch": down},
                            {"transport": "directory", **keys[CITY], "directory": down, "watch": up})
    kill_9_and_check(*nodes, tmp_path)
    run_once(nodes[0])  # takes the last receipts: everything the city has counts as delivered
    county_x = load_config(nodes[0]).databases["x"].url
    assert pg_rows(county_x, "SELECT count(*) FROM tiersync.tiersync_outbox WHERE acked_at IS NULL") == [(0,)]
    assert not list((tmp_path / "up").glob("*.tsb"))  # every bundle imported (none rejected)
    assert not (tmp_path / "up" / "rejected").exists()


def kill_9_and_check(county, city, county_biz, city_biz, tmp_path):
    """A workload at the county while both engines are killed at random points; then exactly once at the city."""
    workload = Workload(county_biz, seed=61)
    workload.start()
    try:
        kill_9_both_sides(county, city, tmp_path, rounds=6, seed=6, run_for=(0.5, 2.0), both=0.5, gap=0.5)
    finally:
        workload.stop.set()
        workload.join(10)
    assert workload.transactions > 100
    run_once(county)
    run_once(city)
    same = "SELECT id, name, region, capital FROM enterprise ORDER BY id"
    assert pg_rows(city_biz, same.replace("id, name, region, capital", "qyid, qymc, xzqh, zczb")
                   .replace("enterprise", "qy_jbxx").replace("ORDER BY id", "ORDER BY qyid")) == pg_rows(county_biz,
                                                                                                          same)
    history = [r[0] for r in pg_rows(city_biz, "SELECT change_seq FROM qy_history ORDER BY change_seq")]
    committed = [r[0] for r in pg_rows(county_biz, "SELECT id FROM committed_change ORDER BY id")]
    assert history == committed  # every change arrived, none twice (change_seq is unique: a repeat would fail)
    assert pg_rows(city_biz, "SELECT count(*) FROM tiersync.tiersync_dead_letter") == [(0,)]
    assert pg_rows(city_biz, "SELECT DISTINCT origin FROM qy_history") == [("county-110101",)]
    assert pg_rows(county_biz, "SELECT count(*) FROM tiersync.tiersync_change_log") == [(0,)]
