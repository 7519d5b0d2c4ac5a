"""Two nodes over the exchange-db transport: up, down by region, no echo, repeats harmless."""

from __future__ import annotations

import sqlite3

from tests.exchange_nodes import capture_out, inbox_in, node_file, q, sqlite_db
from tests.helpers import cli, run_once

ENTERPRISE = "CREATE TABLE enterprise (id INTEGER PRIMARY KEY, name TEXT, region TEXT)"
QY = "CREATE TABLE qy_jbxx (qyid INTEGER PRIMARY KEY, qymc TEXT, xzqh TEXT, sjly TEXT)"
UP_COLUMNS = {"id": "qyid", "name": "qymc", "region": "xzqh"}
DOWN_COLUMNS = {"qyid": "id", "qymc": "name", "xzqh": "region"}


def two_nodes(tmp_path):
    """county-110101 → city-110100 (up), the city's own rows back down to the county whose region matches."""
    county_biz = sqlite_db(tmp_path / "county.db", ENTERPRISE)
    city_biz = sqlite_db(tmp_path / "city.db", QY)
    county_x, city_x = f"sqlite:///{tmp_path}/county-x.db", f"sqlite:///{tmp_path}/city-x.db"
    route = {"key": ["qyid"], "up": True, "down": True, "down_match": "xzqh"}
    county = node_file(tmp_path / "county.yaml", {"id": "county-110101", "tier": "county", "region": "110101",
                                                  "parent": "city-110100"},
                       {"biz": county_biz, "x": county_x},
                       {"database": "x", "poll_interval": 0.1,
                        "links": {"city-110100": {"role": "parent", "transport": "exchange-db", "inbox": city_x}},
                        "tables": {"qy_jbxx": route}},
                       [capture_out("biz", "x", "enterprise", "qy_jbxx", UP_COLUMNS),
                        inbox_in("x", "biz", "qy_jbxx", "enterprise", DOWN_COLUMNS, drop=["sjly"])])
    city = node_file(tmp_path / "city.yaml", {"id": "city-110100", "tier": "city", "region": "110100"},
                     {"biz": city_biz, "x": city_x},
                     {"database": "x", "poll_interval": 0.1,
                      "links": {"county-110101": {"role": "child", "region": "110101", "transport": "exchange-db",
                                                  "inbox": county_x},
                                "county-110102": {"role": "child", "region": "110102", "transport": "exchange-db",
                                                  "inbox": f"sqlite:///{tmp_path}/other-x.db"}},
                      "tables": {"qy_jbxx": route}},
                     [capture_out("biz", "x", "qy_jbxx", "qy_jbxx", {}, name="city-out"),
                      inbox_in("x", "biz", "qy_jbxx", "qy_jbxx")])
    for config, pipeline in ((county, "enterprise-out"), (city, "city-out")):
        cli("triggers", "install", "--config", str(config), "--pipeline", pipeline)
    return county, city


def test_up_and_down_without_echo_and_repeats_are_harmless(tmp_path):
    county, city = two_nodes(tmp_path)
    assert "2 pipeline(s) match their databases" in cli("check", "--config", str(county)).output
    with sqlite3.connect(tmp_path / "county.db") as conn:
        conn.executemany("INSERT INTO enterprise VALUES (?, ?, ?)", [(i, f"县企业{i}", "110101") for i in range(1, 51)])
        conn.execute("UPDATE enterprise SET name = name || '改' WHERE id <= 10")
        conn.execute("DELETE FROM enterprise WHERE id > 45")
    with sqlite3.connect(tmp_path / "city.db") as conn:  # the city's own rows: one for each county
        conn.execute("INSERT INTO qy_jbxx VALUES (1001, '市企业甲', '110101', 'city')")
        conn.execute("INSERT INTO qy_jbxx VALUES (1002, '市企业乙', '110102', 'city')")
    run_once(county)
    run_once(city)
    run_once(county)
    run_once(city)
    county_rows = q(tmp_path / "county.db", "SELECT id, name, region FROM enterprise ORDER BY id")
    city_rows = q(tmp_path / "city.db", "SELECT qyid, qymc, xzqh FROM qy_jbxx ORDER BY qyid")
    assert len(county_rows) == 46 and county_rows[-1] == (1001, "市企业甲", "110101")  # only its own region's row
    assert city_rows == county_rows + [(1002, "市企业乙", "110102")]
    # nothing looped: the county's applied feedback was never queued back up, the city sent only its own rows
    assert q(tmp_path / "county-x.db", "SELECT sum(events) FROM tiersync_outbox") == [(50 + 10 + 5,)]
    assert q(tmp_path / "city-x.db", "SELECT link, sum(events) FROM tiersync_outbox GROUP BY link ORDER BY link") == [
        ("county-110101", 1), ("county-110102", 1)]
    assert q(tmp_path / "city.db", "SELECT count(*) FROM tiersync_change_log") == [(0,)]
    # a repeated delivery (a sender that crashed before marking it sent) changes nothing
    with sqlite3.connect(tmp_path / "county-x.db") as conn:
        conn.execute("UPDATE tiersync_outbox SET acked_at = NULL")
    run_once(county)
    run_once(city)
    assert q(tmp_path / "city.db", "SELECT qyid, qymc, xzqh FROM qy_jbxx ORDER BY qyid") == city_rows
    trace = q(tmp_path / "county-x.db", "SELECT status FROM tiersync_trace WHERE batch_id = ?",
              ("county-110101:city-110100:1",))
    assert sorted(s for (s,) in trace) == ["applied", "queued", "received", "sent"]


def test_network_demo_runs_four_tiers_on_sqlite(tmp_path):
    output = cli("--log-level", "WARNING", "demo-network", "--dir", str(tmp_path)).output
    national = output.split("3. national's enterprise table")[1].split("4. ")[0]
    assert "北京东城安全化工有限公司" in national and "西城冶金机械公司" in national
    dongcheng = output.split("4. dongcheng's")[1].split("4. xicheng's")[0]
    assert "东城：整改完成" in dongcheng and "西城" not in dongcheng
    assert "national-100000    applied" in output  # the county sees its batch applied three hops away
    assert q(tmp_path / "xicheng.db", "SELECT id, region FROM enforcement") == [(2, "110102")]
