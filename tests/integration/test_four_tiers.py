"""Two counties → city → province → national and back down, over kafka, http and exchange-db, SQLite and PostgreSQL.

Each node has its own business database and mapping. Enterprise records go up
and are applied at every tier; enforcement results created at national come
down only to the county whose region code they carry. Nothing loops: every
outbox holds only the node's own changes and what its routes relay.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time

import pytest

from tests.exchange_nodes import capture_out, free_port, inbox_in, node_file, q, sqlite_db
from tests.helpers import cli, pg_exec, pg_rows, spawn_engine

pytestmark = pytest.mark.postgres

QY_UP = {"key": ["qyid"], "up": True}
ZF_DOWN = {"key": ["id"], "down": True, "down_match": "xzqh"}
TABLES = {"qy_jbxx": QY_UP, "zf_jg": ZF_DOWN}
COUNTY_COLUMNS = {"id": "qyid", "name": "qymc", "region": "xzqh"}


def sq_exec(path, sql, rows=None):
    with sqlite3.connect(path) as conn:
        conn.executemany(sql, rows) if rows is not None else conn.execute(sql)


def wait_for(check, timeout=120.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture
def network(tmp_path, pg_server, kafka_broker):
    tag = f"{os.getpid()}_{random.randrange(10**6)}"
    pg = {n: pg_server.create_database(f"{n}_{tag}") for n in ("bx", "cbiz", "cx", "nbiz", "nx")}
    ports = {n: free_port() for n in ("county-b", "city", "province")}
    url = {n: f"http://127.0.0.1:{p}" for n, p in ports.items()}
    k_b, k_p = "county-b/city link key", "city/province link key"
    ids = {"a": "county-110101", "b": "county-110102", "city": "city-110100", "prov": "province-110000",
           "nat": "national-100000"}
    ENT = "CREATE TABLE enterprise (id INTEGER PRIMARY KEY, name TEXT NOT NULL, region TEXT NOT NULL)"
    FB = "CREATE TABLE feedback (id INTEGER PRIMARY KEY, region TEXT, result TEXT)"
    a_x, prov_x = f"sqlite:///{tmp_path}/a-x.db", f"sqlite:///{tmp_path}/prov-x.db"
    ids = {k: f"{v}-{tag[-6:]}" if k in ("a", "city") else v for k, v in ids.items()}  # fresh kafka topics
    nodes = {}
    nodes["a"] = node_file(
        tmp_path / "a.yaml", {"id": ids["a"], "tier": "county", "region": "110101", "parent": ids["city"]},
        {"biz": sqlite_db(tmp_path / "a.db", ENT, FB), "x": a_x},
        {"database": "x", "poll_interval": 0.1, "tables": TABLES,
         "links": {ids["city"]: {"role": "parent", "transport": "kafka", "brokers": [kafka_broker.bootstrap],
                                 "format": "avro"}}},
        [capture_out("biz", "x", "enterprise", "qy_jbxx", COUNTY_COLUMNS),
         inbox_in("x", "biz", "zf_jg", "feedback", {"xzqh": "region", "jg": "result"})])
    nodes["b"] = node_file(
        tmp_path / "b.yaml", {"id": ids["b"], "tier": "county", "region": "110102", "parent": ids["city"]},
        {"biz": sqlite_db(tmp_path / "b.db", ENT, FB), "x": pg["bx"]},
        {"database": "x", "poll_interval": 0.1, "tables": TABLES, "listen": f"127.0.0.1:{ports['county-b']}",
         "links": {ids["city"]: {"role": "parent", "transport": "http", "url": url["city"], "key": k_b}}},
        [capture_out("biz", "x", "enterprise", "qy_jbxx", COUNTY_COLUMNS),
         inbox_in("x", "biz", "zf_jg", "feedback", {"xzqh": "region", "jg": "result"})])
    pg_exec(pg["cbiz"], "CREATE TABLE qy_jbxx (qyid integer PRIMARY KEY, qymc text NOT NULL, xzqh char(6) NOT NULL)",
            "CREATE TABLE zf_jg (id integer PRIMARY KEY, xzqh char(6), jg text)")
    nodes["city"] = node_file(
        tmp_path / "city.yaml", {"id": ids["city"], "tier": "city", "region": "110100", "parent": ids["prov"]},
        {"biz": pg["cbiz"], "x": pg["cx"]},
        {"database": "x", "poll_interval": 0.1, "tables": TABLES, "listen": f"127.0.0.1:{ports['city']}",
         "links": {ids["prov"]: {"role": "parent", "transport": "http", "url": url["province"], "key": k_p},
                   ids["a"]: {"role": "child", "region": "110101", "transport": "kafka", "format": "avro",
                              "brokers": [kafka_broker.bootstrap]},
                   ids["b"]: {"role": "child", "region": "110102", "transport": "http", "url": url["county-b"],
                              "key": k_b}}},
        [capture_out("biz", "x", "qy_jbxx", "qy_jbxx", {}, name="city-own"),
         inbox_in("x", "biz", "qy_jbxx", "qy_jbxx", name="city-qy-in"), inbox_in("x", "biz", "zf_jg", "zf_jg")])
    nodes["prov"] = node_file(  # relays both ways; applies enterprises only, under its own names
        tmp_path / "prov.yaml", {"id": ids["prov"], "tier": "province", "region": "110000", "parent": ids["nat"]},
        {"biz": sqlite_db(tmp_path / "prov.db", "CREATE TABLE qy (id INTEGER PRIMARY KEY, mc TEXT, dq TEXT)"),
         "x": prov_x},
        {"database": "x", "poll_interval": 0.1, "tables": TABLES, "listen": f"127.0.0.1:{ports['province']}",
         "links": {ids["nat"]: {"role": "parent", "transport": "exchange-db", "inbox": pg["nx"]},
                   ids["city"]: {"role": "child", "region": "110100", "transport": "http", "url": url["city"],
                                 "key": k_p}}},
        [inbox_in("x", "biz", "qy_jbxx", "qy", {"qyid": "id", "qymc": "mc", "xzqh": "dq"})])
    pg_exec(pg["nbiz"], "CREATE TABLE qy_jbxx (qyid integer PRIMARY KEY, qymc text NOT NULL, xzqh text)",
            "CREATE TABLE feedback (id integer PRIMARY KEY, xzqh text NOT NULL, result text)")
    nodes["nat"] = node_file(
        tmp_path / "nat.yaml", {"id": ids["nat"], "tier": "national", "region": "100000"},
        {"biz": pg["nbiz"], "x": pg["nx"]},
        {"database": "x", "poll_interval": 0.1, "tables": TABLES,
         "links": {ids["prov"]: {"role": "child", "region": "110000", "transport": "exchange-db", "inbox": prov_x},
                   "province-120000": {"role": "child", "region": "120000", "transport": "exchange-db",
                                       "inbox": f"sqlite:///{tmp_path}/tianjin-x.db"}}},
        [capture_out("biz", "x", "feedback", "zf_jg", {"result": "jg"}, name="feedback-down"),
         # replication origins are per PostgreSQL cluster and named after the pipeline: the test's nodes share one
         inbox_in("x", "biz", "qy_jbxx", "qy_jbxx", name="national-qy-in")])
    for name, pipeline in (("a", "enterprise-out"), ("b", "enterprise-out"), ("city", "city-own"),
                           ("nat", "feedback-down")):
        cli("triggers", "install", "--config", str(nodes[name]), "--pipeline", pipeline)
    return nodes, pg, tmp_path, ids


def test_four_tiers_up_down_and_no_loops(network):
    nodes, pg, tmp, ids = network
    sq_exec(tmp / "a.db", "INSERT INTO enterprise VALUES (?, ?, '110101')", [(i, f"东城企业{i}") for i in range(1, 41)])
    sq_exec(tmp / "b.db", "INSERT INTO enterprise VALUES (?, ?, '110102')",
            [(i, f"西城企业{i}") for i in range(1001, 1031)])
    pg_exec(pg["cbiz"], "INSERT INTO qy_jbxx VALUES (5001, '市属企业', '110100')")
    pg_exec(pg["nbiz"], "INSERT INTO feedback VALUES (1, '110101', '东城整改完成'), (2, '110102', '西城待复查'), "
                        "(3, '120101', '天津的结果'), (4, '110101', '东城罚款')")
    engines = {name: spawn_engine(path, log=tmp / f"{name}.log") for name, path in nodes.items()}
    try:
        def expected_enterprises():
            return sorted(q(tmp / "a.db", "SELECT id, name, region FROM enterprise") +
                          q(tmp / "b.db", "SELECT id, name, region FROM enterprise") + [(5001, "市属企业", "110100")])

        def converged():
            want = expected_enterprises()
            assert [tuple(r) for r in pg_rows(pg["nbiz"], "SELECT qyid, qymc, xzqh FROM qy_jbxx ORDER BY 1")] == want
            assert q(tmp / "prov.db", "SELECT id, mc, dq FROM qy ORDER BY 1") == want
            city_want = [r for r in want if r[0] != 5001] + [(5001, "市属企业", "110100")]
            assert sorted(pg_rows(pg["cbiz"], "SELECT qyid, qymc, xzqh FROM qy_jbxx")) == sorted(city_want)
            feedback = pg_rows(pg["nbiz"], "SELECT id, xzqh, result FROM feedback ORDER BY id")
            assert q(tmp / "a.db", "SELECT id, region, result FROM feedback ORDER BY id") == [
                r for r in feedback if r[1] == "110101"]
            assert q(tmp / "b.db", "SELECT id, region, result FROM feedback ORDER BY id") == [
                r for r in feedback if r[1] == "110102"]
            assert pg_rows(pg["cbiz"], "SELECT id, xzqh, jg FROM zf_jg ORDER BY id") == [
                r for r in feedback if r[1].startswith("1101")]

        wait_for(converged)
        # updates and deletes at both counties and at national travel the same ways
        sq_exec(tmp / "a.db", "UPDATE enterprise SET name = name || '（更名）' WHERE id <= 5")
        sq_exec(tmp / "a.db", "DELETE FROM enterprise WHERE id > 35")
        sq_exec(tmp / "b.db", "DELETE FROM enterprise WHERE id IN (1001, 1002)")
        pg_exec(pg["nbiz"], "UPDATE feedback SET result = '东城已复查' WHERE id = 1",
                "DELETE FROM feedback WHERE id = 2")
        wait_for(converged)

        def acknowledged_end_to_end():  # county B (http) sees its first batch applied at national
            out = cli("trace", "--config", str(nodes["b"]), "--batch", f"{ids['b']}:{ids['city']}:1").output
            assert f"{ids['nat']:<20} applied" in out, out
        wait_for(acknowledged_end_to_end, 60)
    finally:
        for engine in engines.values():
            engine.terminate()
        for engine in engines.values():
            engine.wait(30)
    # nothing looped: each county queued exactly its own changes; national queued only its feedback
    assert q(tmp / "a-x.db", "SELECT DISTINCT link FROM tiersync_outbox") == [(ids["city"],)]
    assert q(tmp / "a-x.db", "SELECT count(*) FROM tiersync_trace WHERE status = 'forwarded' AND node = ?",
             (ids["a"],)) == [(0,)]  # the county relayed nothing (the feedback it applied stayed there)
    assert pg_rows(pg["nx"], "SELECT link, sum(events) FROM tiersync.tiersync_outbox GROUP BY link ORDER BY link") == [
        (ids["prov"], 5), ("province-120000", 1)]  # national's own feedback only, each row to its own province
    assert pg_rows(pg["cx"], "SELECT link FROM tiersync.tiersync_outbox GROUP BY link ORDER BY link") == [
        (ids["a"],), (ids["b"],), (ids["prov"],)]
    assert q(tmp / "tianjin-x.db", "SELECT sender, events FROM tiersync_inbox") == [(ids["nat"], 1)]
    for name in nodes:
        log = (tmp / f"{name}.log").read_text()
        assert "Traceback" not in log and "stopped" not in log, log
