"""Two counties → city → province → national and back down, over kafka, http,
exchange-db and an offline-bundle (directory) link.

Each node has its own business database and mapping, MariaDB, PostgreSQL and
SQLite mixed: county A and the province keep theirs in MariaDB (trigger
capture and apply), county B in SQLite, the city and national in PostgreSQL.
Enterprise records go up and are applied at every tier; the city and the
province also capture their own enterprises from the table they apply into,
so relayed rows must not be captured again. Enforcement results created at
national come down only to the county whose region code they carry. Nothing
loops: every outbox holds only the node's own changes and what its routes relay.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time

import pytest

from tests.exchange_nodes import capture_out, directory_links, free_port, inbox_in, node_file, q, sqlite_db
from tests.helpers import cli, pg_exec, pg_rows, spawn_engine
from tests.mysql_helpers import my_exec, my_rows

pytestmark = [pytest.mark.postgres, pytest.mark.mariadb, pytest.mark.kafka]

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
def network(tmp_path, pg_server, maria_server, kafka_broker):
    tag = f"{os.getpid()}_{random.randrange(10**6)}"
    pg = {n: pg_server.create_database(f"{n}_{tag}") for n in ("bx", "cbiz", "cx", "nbiz", "nx")}
    maria = {n: maria_server.create_database(f"{n}_{tag}") for n in ("abiz", "pbiz")}
    ports = {n: free_port() for n in ("county-b", "city", "province")}
    url = {n: f"http://127.0.0.1:{p}" for n, p in ports.items()}
    k_b, k_p = "county-b/city link key", "city/province link key"
    ids = {"a": "county-110101", "b": "county-110102", "city": "city-110100", "prov": "province-110000",
           "nat": "national-100000"}
    ENT = "CREATE TABLE enterprise (id INTEGER PRIMARY KEY, name TEXT NOT NULL, region TEXT NOT NULL)"
    FB = "CREATE TABLE feedback (id INTEGER PRIMARY KEY, region TEXT, result TEXT)"
    my_exec(maria["abiz"], "CREATE TABLE enterprise (id INT PRIMARY KEY, name VARCHAR(100) NOT NULL, "
                           "region CHAR(6) NOT NULL)",
            "CREATE TABLE feedback (id INT PRIMARY KEY, region CHAR(6), result VARCHAR(200))")
    my_exec(maria["pbiz"], "CREATE TABLE qy (id INT PRIMARY KEY, mc VARCHAR(100), dq CHAR(6))")
    a_x, prov_x = f"sqlite:///{tmp_path}/a-x.db", f"sqlite:///{tmp_path}/prov-x.db"
    ids = {k: f"{v}-{tag[-6:]}" if k in ("a", "city") else v for k, v in ids.items()}  # fresh kafka topics
    nodes = {}
    to_nat, to_prov = directory_links(tmp_path, ids["prov"], ids["nat"])  # offline bundles
    nodes["a"] = node_file(
        tmp_path / "a.yaml", {"id": ids["a"], "tier": "county", "region": "110101", "parent": ids["city"]},
        {"biz": maria["abiz"], "x": a_x},
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
    nodes["prov"] = node_file(  # relays both ways; applies enterprises only, under its own names, and adds its own
        tmp_path / "prov.yaml", {"id": ids["prov"], "tier": "province", "region": "110000", "parent": ids["nat"]},
        {"biz": maria["pbiz"], "x": prov_x},
        {"database": "x", "poll_interval": 0.1, "tables": TABLES, "listen": f"127.0.0.1:{ports['province']}",
         "links": {ids["nat"]: {"role": "parent", **to_nat},
                   ids["city"]: {"role": "child", "region": "110100", "transport": "http", "url": url["city"],
                                 "key": k_p}}},
        [capture_out("biz", "x", "qy", "qy_jbxx", {"id": "qyid", "mc": "qymc", "dq": "xzqh"}, name="province-own"),
         inbox_in("x", "biz", "qy_jbxx", "qy", {"qyid": "id", "qymc": "mc", "xzqh": "dq"})])
    pg_exec(pg["nbiz"], "CREATE TABLE qy_jbxx (qyid integer PRIMARY KEY, qymc text NOT NULL, xzqh text)",
            "CREATE TABLE feedback (id integer PRIMARY KEY, xzqh text NOT NULL, result text)")
    nodes["nat"] = node_file(
        tmp_path / "nat.yaml", {"id": ids["nat"], "tier": "national", "region": "100000"},
        {"biz": pg["nbiz"], "x": pg["nx"]},
        {"database": "x", "poll_interval": 0.1, "tables": TABLES,
         "links": {ids["prov"]: {"role": "child", "region": "110000", **to_prov},
                   "province-120000": {"role": "child", "region": "120000", "transport": "exchange-db",
                                       "inbox": f"sqlite:///{tmp_path}/tianjin-x.db"}}},
        [capture_out("biz", "x", "feedback", "zf_jg", {"result": "jg"}, name="feedback-down"),
         # replication origins are per PostgreSQL cluster and named after the pipeline: the test's nodes share one
         inbox_in("x", "biz", "qy_jbxx", "qy_jbxx", name="national-qy-in")])
    for name, pipeline in (("a", "enterprise-out"), ("b", "enterprise-out"), ("city", "city-own"),
                           ("prov", "province-own"), ("nat", "feedback-down")):
        cli("triggers", "install", "--config", str(nodes[name]), "--pipeline", pipeline)
    return nodes, pg, maria, tmp_path, ids


def test_four_tiers_up_down_and_no_loops(network):
    nodes, pg, maria, tmp, ids = network
    for i in range(1, 41):
        my_exec(maria["abiz"], "INSERT INTO enterprise VALUES (%s, %s, '110101')", params=(i, f"东城企业{i}"))
    sq_exec(tmp / "b.db", "INSERT INTO enterprise VALUES (?, ?, '110102')",
            [(i, f"西城企业{i}") for i in range(1001, 1031)])
    pg_exec(pg["cbiz"], "INSERT INTO qy_jbxx VALUES (5001, '市属企业', '110100')")
    my_exec(maria["pbiz"], "INSERT INTO qy VALUES (7001, '省属企业', '110000')")
    pg_exec(pg["nbiz"], "INSERT INTO feedback VALUES (1, '110101', '东城整改完成'), (2, '110102', '西城待复查'), "
                        "(3, '120101', '天津的结果'), (4, '110101', '东城罚款')")
    engines = {name: spawn_engine(path, log=tmp / f"{name}.log") for name, path in nodes.items()}
    try:
        def county_enterprises():
            return sorted(my_rows(maria["abiz"], "SELECT id, name, region FROM enterprise") +
                          q(tmp / "b.db", "SELECT id, name, region FROM enterprise"))

        province_own = [(7001, "省属企业", "110000")]

        def converged():
            city_want = sorted(county_enterprises() + [(5001, "市属企业", "110100")])
            want = sorted(city_want + province_own)  # the province's own row goes up only
            assert [tuple(r) for r in pg_rows(pg["nbiz"], "SELECT qyid, qymc, xzqh FROM qy_jbxx ORDER BY 1")] == want
            assert my_rows(maria["pbiz"], "SELECT id, mc, dq FROM qy ORDER BY 1") == want
            assert sorted(pg_rows(pg["cbiz"], "SELECT qyid, qymc, xzqh FROM qy_jbxx")) == city_want
            feedback = pg_rows(pg["nbiz"], "SELECT id, xzqh, result FROM feedback ORDER BY id")
            assert my_rows(maria["abiz"], "SELECT id, region, result FROM feedback ORDER BY id") == [
                r for r in feedback if r[1] == "110101"]
            assert q(tmp / "b.db", "SELECT id, region, result FROM feedback ORDER BY id") == [
                r for r in feedback if r[1] == "110102"]
            assert pg_rows(pg["cbiz"], "SELECT id, xzqh, jg FROM zf_jg ORDER BY id") == [
                r for r in feedback if r[1].startswith("1101")]

        wait_for(converged)
        # updates and deletes at both counties and at national travel the same ways
        my_exec(maria["abiz"], "UPDATE enterprise SET name = CONCAT(name, '（更名）') WHERE id <= 5",
                "DELETE FROM enterprise WHERE id > 35")
        sq_exec(tmp / "b.db", "DELETE FROM enterprise WHERE id IN (1001, 1002)")
        my_exec(maria["pbiz"], "UPDATE qy SET mc = '省属企业（改制）' WHERE id = 7001")
        province_own[0] = (7001, "省属企业（改制）", "110000")
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
    # what the city and the province applied into the tables they capture was relayed, never captured again:
    # their own batches (those not forwarded from an inbox) hold only their own rows' changes
    own = ("SELECT sum(events) FROM {o} WHERE link = {p} AND batch_id NOT IN "
           "(SELECT detail FROM {t} WHERE status = 'forwarded')")
    assert pg_rows(pg["cx"], own.format(o="tiersync.tiersync_outbox", t="tiersync.tiersync_trace", p="%s"),
                   (ids["prov"],)) == [(1,)]
    assert q(tmp / "prov-x.db", own.format(o="tiersync_outbox", t="tiersync_trace", p="?"), (ids["nat"],)) == [(2,)]
    for name in nodes:
        log = (tmp / f"{name}.log").read_text()
        assert "Traceback" not in log and "stopped" not in log, log
