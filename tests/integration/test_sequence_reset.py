"""A sender whose exchange database was restored from an old backup: its new batches reuse old sequence numbers.

Without a deliberate reset the receiver takes them for repeats and drops them; `tiersync inbox accept-sequence`
on the receiver and `tiersync outbox resend` on the sender bring them over, exactly once.
"""

from __future__ import annotations

import json
import sqlite3

from tests.exchange_nodes import county_city, insert_enterprises, q, sqlite_copy
from tests.helpers import cli, run_once


def city_names(tmp_path) -> dict[int, str]:
    return dict(q(tmp_path / "city.db", "SELECT qyid, qymc FROM qy_jbxx"))


def test_a_restored_sender_is_taken_up_again_deliberately(tmp_path):
    county, city = county_city(tmp_path)
    insert_enterprises(tmp_path, range(1, 11))  # batch 1
    run_once(county)
    run_once(city)
    sqlite_copy(tmp_path / "county-x.db", tmp_path / "backup.db")  # the county's exchange database, backed up
    insert_enterprises(tmp_path, range(11, 31))  # batches 2 and 3
    run_once(county)
    run_once(city)
    assert len(city_names(tmp_path)) == 30

    sqlite_copy(tmp_path / "backup.db", tmp_path / "county-x.db")  # restored: its sequence is back at 1
    # how the operator finds the first sequence to take up again: the restored sender's last queued is 1
    county_status = json.loads(cli("status", "--config", str(county), "--json").output)["exchange"]["backlogs"]
    assert [(b["peer"], b["last_seq"]) for b in county_status] == [("city-110100", 1)]
    city_status = json.loads(cli("status", "--config", str(city), "--json").output)["exchange"]["backlogs"]
    assert [b["last_seq"] for b in city_status if b["side"] == "outbox"] == [0]
    with sqlite3.connect(tmp_path / "county.db") as conn:
        conn.execute("UPDATE enterprise SET name = '新名' WHERE id <= 15")  # new changes: numbered 2 and 3 again
    run_once(county)
    run_once(city)
    assert q(tmp_path / "county-x.db", "SELECT seq FROM tiersync_outbox WHERE acked_at IS NOT NULL "
                                       "ORDER BY seq") == [(1,), (2,), (3,)]
    assert "新名" not in city_names(tmp_path).values()  # taken for repeats of batches 2 and 3, and dropped

    bad = cli("inbox", "accept-sequence", "--config", str(city), "--sender", "county-11O101", "--from", "2",
              expect=2)
    assert "no link named 'county-11O101'" in bad.output
    out = cli("inbox", "accept-sequence", "--config", str(city), "--sender", "county-110101", "--from", "2").output
    assert "the next batch taken is 2 (qy_jbxx-in, forward)" in out
    assert "2 received batch(es) from 2 on dropped" in out  # the restored sender's 2 and 3 (the old ones purged)
    out = cli("outbox", "resend", "--config", str(county), "--link", "city-110100", "--from", "2").output
    assert "2 batch(es) from 2 on will be sent again" in out
    run_once(county)
    run_once(city)
    names = city_names(tmp_path)
    assert len(names) == 30 and [names[i] for i in range(1, 16)] == ["新名"] * 15
    assert names[16] == "企业16"
    # and the link goes on as usual: the next batch is 4
    insert_enterprises(tmp_path, range(31, 36))
    run_once(county)
    run_once(city)
    assert len(city_names(tmp_path)) == 35
    assert q(tmp_path / "city-x.db", "SELECT consumer, last_seq FROM tiersync_inbox_consumer ORDER BY consumer") == [
        ("forward", 4), ("qy_jbxx-in", 4)]


def test_resend_says_when_there_is_nothing_to_send(tmp_path):
    county, _ = county_city(tmp_path)
    result = cli("outbox", "resend", "--config", str(county), "--link", "city-110100", "--from", "7", expect=1)
    assert "no outbox batch from 7 on" in result.output
    assert "must be 1 or more" in cli("inbox", "accept-sequence", "--config", str(county), "--sender",
                                      "city-110100", "--from", "0", expect=2).output
