"""What waits at each end of a link (`tiersync status`), and the retention of the trace and the outbox."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta, timezone

import yaml

from engine.config import load_config
from engine.network import Pruner
from tests.exchange_nodes import county_city, insert_enterprises, q, set_exchange
from tests.helpers import cli, run_once


def status(config) -> tuple[dict, str]:
    doc = json.loads(cli("status", "--config", str(config), "--json").output)
    return doc, cli("status", "--config", str(config)).output


def backlogs(doc: dict, side: str) -> list[tuple]:
    return [(b["peer"], b["consumer"], b["batches"], b["changes"]) for b in doc["exchange"]["backlogs"]
            if b["side"] == side]


def test_status_shows_the_outbox_and_inbox_backlogs_and_warns_past_the_thresholds(tmp_path):
    county, city = county_city(tmp_path, backlog_warning={"batches": 3, "age": 3600})
    insert_enterprises(tmp_path, range(1, 26))
    cli("run", "--config", str(county), "--pipeline", "enterprise-out", "--once")  # queued, not sent
    doc, text = status(county)
    assert backlogs(doc, "outbox") == [("city-110100", "", 3, 25)]  # 10 + 10 + 5 changes
    [outbox] = doc["exchange"]["backlogs"]
    assert outbox["age_seconds"] >= 0 and outbox["oldest"] is not None and outbox["last_seq"] == 3
    assert "3 batches waiting (warning at 3)" in outbox["warning"] and "waited" not in outbox["warning"]
    assert "warning: outbox city-110100: 3 batches waiting" in text

    run_once(county)  # delivered into the city's inbox; the city has not applied them yet
    doc, text = status(county)
    assert backlogs(doc, "outbox") == [("city-110100", "", 0, 0)] and "warning" not in text
    doc, text = status(city)
    # the city's two inbox consumers: its own pipeline and the relay; nothing to send on (no route down)
    assert sorted(backlogs(doc, "inbox")) == [("county-110101", "forward", 3, 25),
                                              ("county-110101", "qy_jbxx-in", 3, 25)]
    assert backlogs(doc, "outbox") == [("county-110101", "", 0, 0)]
    assert "inbox    county-110101" in text and "qy_jbxx-in" in text
    assert {b["last_seq"] for b in doc["exchange"]["backlogs"] if b["side"] == "inbox"} == {0}  # none applied
    [inbox_pipeline] = doc["pipelines"]  # an inbox pipeline's own status: what it has not applied
    assert (inbox_pipeline["pending"], inbox_pipeline["source_position"]) == (25, "inbox: 3 batches waiting")

    set_exchange(city, backlog_warning={"batches": None, "age": 0.001})  # by age only
    doc, text = status(city)
    assert all("waited" in b["warning"] for b in doc["exchange"]["backlogs"] if b["side"] == "inbox")
    assert "warning: inbox county-110101: the oldest has waited" in text

    run_once(city)  # applied: nothing waits any more
    doc, text = status(city)
    assert backlogs(doc, "inbox") == [] and "nothing received is waiting to be applied" in text
    assert doc["pipelines"][0]["pending"] == 0
    assert q(tmp_path / "city.db", "SELECT count(*) FROM qy_jbxx") == [(25,)]


def test_status_of_an_unreachable_exchange_database_is_an_error(tmp_path):
    county, _ = county_city(tmp_path)
    set_exchange(county)
    doc = yaml.safe_load(county.read_text(encoding="utf-8"))
    doc["databases"]["x"]["url"] = f"sqlite:///{tmp_path}/no/such/dir/x.db"
    county.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    result = cli("status", "--config", str(county), expect=1)
    assert "exchange database error:" in result.output


def test_the_running_node_prunes_old_trace_rows_and_acknowledged_batches(tmp_path):
    county, city = county_city(tmp_path)
    insert_enterprises(tmp_path, range(1, 26))
    run_once(county)
    run_once(city)
    run_once(county)  # pulls the city's trace back
    county_x = tmp_path / "county-x.db"
    batch = "county-110101:city-110100:1"
    assert {s for (s,) in q(county_x, "SELECT status FROM tiersync_trace WHERE batch_id = ?", (batch,))} == {
        "queued", "sent", "received", "applied"}
    assert q(county_x, "SELECT count(*) FROM tiersync_outbox WHERE acked_at IS NOT NULL") == [(3,)]
    assert q(county_x, "SELECT count(*) FROM tiersync_trace_key") == [(25,)]
    # within the retention (30 days of trace, 7 of acknowledged batches by default) nothing goes
    assert Pruner(load_config(county), threading.Event()).prune_now() == (0, 0)

    insert_enterprises(tmp_path, range(26, 31))
    cli("run", "--config", str(county), "--pipeline", "enterprise-out", "--once")  # batch 4: queued, not sent
    # a running node with a retention of about a second: its pruner removes the delivered batches and their
    # trace, but a batch still waiting in the outbox keeps its trace
    set_exchange(county, retention={"trace_days": 1 / 86400, "outbox_days": 1 / 86400, "interval": 0.2})
    time.sleep(1.2)
    cli("run", "--config", str(county), "--pipeline", "enterprise-out", "--once")  # the pipeline alone: no pruner
    assert q(county_x, "SELECT count(*) FROM tiersync_outbox WHERE acked_at IS NOT NULL") == [(3,)]
    Pruner(load_config(county), threading.Event()).run(once=True)  # the node's pruner, one round
    assert q(county_x, "SELECT seq, acked_at FROM tiersync_outbox") == [(4, None)]
    assert {b for (b,) in q(county_x, "SELECT DISTINCT batch_id FROM tiersync_trace")} == {
        "county-110101:city-110100:4"}
    assert {b for (b,) in q(county_x, "SELECT DISTINCT batch_id FROM tiersync_trace_key")} == {
        "county-110101:city-110100:4"}
    assert f"nothing known about {batch}" in cli("trace", "--config", str(county), "--batch", batch, expect=1).output
    assert "no batch that this node queued carried" in cli("trace", "--config", str(county), "--table", "qy_jbxx",
                                                            "--key", "1", expect=1).output
    assert "county-110101:city-110100:4" in cli("trace", "--config", str(county), "--table", "qy_jbxx",
                                                 "--key", "27").output

    # the city's running node (`tiersync run --once`) prunes its own trace the same way
    assert q(tmp_path / "city-x.db", "SELECT count(*) FROM tiersync_trace") != [(0,)]
    set_exchange(city, retention={"trace_days": 1 / 86400})
    time.sleep(1.2)
    cli("run", "--config", str(city), "--once")
    assert q(tmp_path / "city-x.db", "SELECT count(*) FROM tiersync_trace") == [(0,)]
    assert q(tmp_path / "city.db", "SELECT count(*) FROM qy_jbxx") == [(25,)]  # pruning never touches data


def test_pruning_by_time_keeps_what_is_younger(tmp_path):
    county, city = county_city(tmp_path)
    insert_enterprises(tmp_path, range(1, 11))
    run_once(county)
    pruner = Pruner(load_config(county), threading.Event())
    now = datetime.now(timezone.utc)
    assert pruner.prune_now(now=now + timedelta(days=6, hours=23)) == (0, 0)  # 7 days for acknowledged batches
    assert pruner.prune_now(now=now + timedelta(days=7, minutes=1))[1] == 1
    assert q(tmp_path / "county-x.db", "SELECT count(*) FROM tiersync_outbox") == [(0,)]
    assert q(tmp_path / "county-x.db", "SELECT count(*) FROM tiersync_trace") != [(0,)]  # 30 days of trace
    assert pruner.prune_now(now=now + timedelta(days=30, minutes=1))[0] > 0
    assert q(tmp_path / "county-x.db", "SELECT count(*) FROM tiersync_trace") == [(0,)]


def test_retention_settings_are_checked(tmp_path):
    county, _ = county_city(tmp_path)
    set_exchange(county, retention={"trace_days": 0, "outbox_dayz": 1})
    output = cli("check", "--config", str(county), "--offline", expect=2).output
    assert "trace_days" in output and "outbox_dayz" in output


def test_backlog_retention_and_a_new_sequence_on_postgresql_exchange_databases(tmp_path, pg_databases):
    from engine.resequence import accept_sequence, resend_from
    from tests.helpers import pg_rows

    county_x, city_x = pg_databases
    county, city = county_city(tmp_path, exchange_urls=(county_x, city_x))
    insert_enterprises(tmp_path, range(1, 26))
    cli("run", "--config", str(county), "--pipeline", "enterprise-out", "--once")
    doc, _ = status(county)
    assert backlogs(doc, "outbox") == [("city-110100", "", 3, 25)]
    run_once(county)
    doc, _ = status(city)
    assert sorted(backlogs(doc, "inbox")) == [("county-110101", "forward", 3, 25),
                                              ("county-110101", "qy_jbxx-in", 3, 25)]
    run_once(city)
    run_once(county)
    doc, _ = status(city)
    assert backlogs(doc, "inbox") == []
    assert q(tmp_path / "city.db", "SELECT count(*) FROM qy_jbxx") == [(25,)]

    later = datetime.now(timezone.utc) + timedelta(days=31)
    traces, batches = Pruner(load_config(county), threading.Event()).prune_now(now=later)
    assert traces > 0 and batches == 3
    assert pg_rows(county_x, "SELECT count(*) FROM tiersync.tiersync_trace") == [(0,)]
    assert pg_rows(county_x, "SELECT count(*) FROM tiersync.tiersync_trace_key") == [(0,)]
    assert pg_rows(county_x, "SELECT count(*) FROM tiersync.tiersync_outbox") == [(0,)]

    insert_enterprises(tmp_path, range(26, 31))
    run_once(county)  # batch 4 delivered, not applied yet
    reset = accept_sequence(load_config(city), "county-110101", 4)
    assert reset.dropped == 1 and sorted(reset.pipelines) == ["forward", "qy_jbxx-in"]
    assert resend_from(load_config(county), "city-110100", 4) == 1
    run_once(county)
    run_once(city)
    assert q(tmp_path / "city.db", "SELECT count(*) FROM qy_jbxx") == [(30,)]
