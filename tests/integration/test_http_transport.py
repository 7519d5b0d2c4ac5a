"""The http transport: signed requests only, persisted before the answer, kill -9 on either side."""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
import urllib.error
import urllib.request

import pytest

from engine.batchcodec import encode_batch
from engine.event import ChangeEvent, Op, TableId
from tests.exchange_nodes import county_sender, free_port, inbox_in, kill_9_both_sides, node_file, q, sqlite_db
from tests.helpers import cli, spawn_engine
from transports.http import BATCH_PATH, HEADERS, signature

KEY = "per-link secret 县-市"


@pytest.fixture
def county_city(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    route = {"qy_jbxx": {"key": ["qyid"], "up": True}}
    county = county_sender(tmp_path, {"transport": "http", "url": url, "key": KEY, "batch_size": 25, "timeout": 5},
                           batch_size=70)
    city = node_file(
        tmp_path / "city.yaml", {"id": "city-110100", "tier": "city", "region": "110100"},
        {"biz": sqlite_db(tmp_path / "city.db", "CREATE TABLE qy_jbxx (qyid INTEGER PRIMARY KEY, qymc TEXT)",
                          "CREATE TABLE qy_history (hid INTEGER PRIMARY KEY, qyid INTEGER, qymc TEXT, op TEXT, "
                          "change_seq INTEGER UNIQUE)"),
         "x": f"sqlite:///{tmp_path}/city-x.db"},
        {"database": "x", "poll_interval": 0.05, "tables": route, "listen": f"127.0.0.1:{port}",
         "links": {"county-110101": {"role": "child", "region": "110101", "transport": "http", "key": KEY}}},
        [inbox_in("x", "biz", "qy_jbxx", "qy_jbxx", batch_size=33),
         {"name": "history", "source": {"database": "x", "capture": "inbox", "tables": ["qy_jbxx"]},
          "target": {"database": "biz", "mode": "append"}, "poll_interval": 0.05, "batch_size": 41,
          "mappings": [{"source": "qy_jbxx", "target": "qy_history", "metadata": {"op": "op", "seq": "change_seq"}}]}])
    cli("triggers", "install", "--config", str(county), "--pipeline", "enterprise-out")
    with sqlite3.connect(tmp_path / "county.db") as conn:  # the test's witness of every captured change
        conn.execute("CREATE TABLE committed_change (id INTEGER PRIMARY KEY)")
        conn.execute("CREATE TRIGGER witness AFTER INSERT ON tiersync_change_log "
                     "BEGIN INSERT INTO committed_change VALUES (NEW.id); END")
    return county, city, url, tmp_path


def wait_until_listening(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/", timeout=1)
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} never answered")


def post(url, body: bytes, *, sender="county-110101", key=KEY, seq=1, events=1, batch=None, at=None, sign_body=None):
    fields = {"X-Tiersync-Node": sender, "X-Tiersync-Batch": batch or f"{sender}:city-110100:{seq}",
              "X-Tiersync-Seq": str(seq), "X-Tiersync-Events": str(events),
              "X-Tiersync-Time": f"{at if at is not None else time.time():.3f}"}
    sig = signature(key, "POST", BATCH_PATH, [fields[h] for h in HEADERS], body if sign_body is None else sign_body)
    request = urllib.request.Request(url + BATCH_PATH, data=body, method="POST",
                                     headers={**fields, "X-Tiersync-Signature": sig})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_only_signed_recent_whole_batches_are_accepted(county_city):
    county, city, url, tmp = county_city
    engine = spawn_engine(city, log=tmp / "city.log")
    try:
        wait_until_listening(url)
        batch = encode_batch([ChangeEvent(Op.CREATE, TableId(None, "qy_jbxx"), (7,), None, {"qyid": 7, "qymc": "甲"},
                                          1, origin="county-110101", path=("county-110101",))])
        refused = [
            (post(url, batch, sender="county-999999"), 403, "unknown sender"),
            (post(url, batch, key="wrong key"), 401, "bad signature"),
            (post(url, batch, sign_body=b"what was signed"), 401, "bad signature"),
            (post(url, batch, at=time.time() - 3600), 401, "more than 300s away"),
            (post(url, batch, batch="county-110101:city-110100:8"), 400, "does not match"),
            (post(url, batch[:-5]), 400, "damaged batch"),
            (post(url, batch, events=2), 400, "different number of events"),
        ]
        for (code, answer), expected_code, words in refused:
            assert code == expected_code and words in answer["error"], (code, answer)
        assert q(tmp / "city-x.db", "SELECT count(*) FROM tiersync_inbox") == [(0,)]
        assert post(url, batch) == (200, {"stored": True, "batch": "county-110101:city-110100:1"})
        assert post(url, batch) == (200, {"stored": False, "batch": "county-110101:city-110100:1"})  # a replay
        deadline = time.monotonic() + 20
        while q(tmp / "city.db", "SELECT qyid, qymc FROM qy_jbxx") != [(7, "甲")]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        engine.terminate()
        engine.wait(20)
    assert "refused POST" in (tmp / "city.log").read_text()


def test_a_sender_with_the_wrong_key_is_told_clearly(county_city):
    county, city, url, tmp = county_city
    county.write_text(county.read_text(encoding="utf-8").replace(KEY, "not the key"), encoding="utf-8")
    engine = spawn_engine(city, log=tmp / "city.log")
    try:
        wait_until_listening(url)
        with sqlite3.connect(tmp / "county.db") as conn:
            conn.execute("INSERT INTO enterprise VALUES (1, 'x')")
        result = cli("run", "--config", str(county), "--once", expect=1)
        assert "refused the request (HTTP 401): " in result.output
        assert "bad signature" in result.output
    finally:
        engine.terminate()
        engine.wait(20)
    assert q(tmp / "county-x.db", "SELECT count(*) FROM tiersync_outbox WHERE acked_at IS NULL") == [(1,)]  # kept


class Workload(threading.Thread):
    def __init__(self, path, seed):
        super().__init__(daemon=True)
        self.path, self.random, self.stop, self.transactions = path, random.Random(seed), threading.Event(), 0

    def run(self):
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        while not self.stop.is_set():
            i = self.random.randrange(1, 300)
            r = self.random.random()
            conn.execute("BEGIN IMMEDIATE")
            if r < 0.6:
                conn.execute("INSERT INTO enterprise VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET name = name || '+'",
                             (i, f"企业{i}"))
            elif r < 0.85:
                conn.execute("UPDATE enterprise SET name = name || '*' WHERE id BETWEEN ? AND ?", (i, i + 2))
            else:
                conn.execute("DELETE FROM enterprise WHERE id = ?", (i,))
            conn.execute("COMMIT")
            self.transactions += 1
            time.sleep(0.003)
        conn.close()


def test_kill_9_of_either_side_over_http_loses_and_doubles_nothing(county_city):
    county, city, url, tmp = county_city
    workload = Workload(tmp / "county.db", 9)
    workload.start()
    try:
        kill_9_both_sides(county, city, tmp, rounds=6, seed=3, run_for=(0.7, 2.0), both=0.4, gap=0.7)
    finally:
        workload.stop.set()
        workload.join(10)
    assert workload.transactions > 100
    engine = spawn_engine(city, log=tmp / "city.log")
    try:
        wait_until_listening(url)
        cli("run", "--config", str(county), "--once")
        expected = q(tmp / "county.db", "SELECT id, name FROM enterprise ORDER BY id")
        committed = [r[0] for r in q(tmp / "county.db", "SELECT id FROM committed_change ORDER BY id")]
        deadline = time.monotonic() + 60
        history = "SELECT change_seq FROM qy_history ORDER BY change_seq"
        while (q(tmp / "city.db", "SELECT qyid, qymc FROM qy_jbxx ORDER BY qyid") != expected or
               [r[0] for r in q(tmp / "city.db", history)] != committed):
            assert time.monotonic() < deadline, "the city never caught up"
            time.sleep(0.2)
    finally:
        engine.terminate()
        engine.wait(20)
    assert q(tmp / "city.db", "SELECT count(*) FROM tiersync_dead_letter") == [(0,)]
