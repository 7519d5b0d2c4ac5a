"""Exchange units: node config with links and routes, routing, the batch format, inbox and outbox on SQLite."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from engine.apply import Batch
from engine.batchcodec import CorruptBatch, decode_batch, encode_batch
from engine.config import load_config
from engine.errors import ConfigError
from engine.event import ChangeEvent, Op, TableId
from engine.exchange import InboxReader, OutboxSink
from engine.mapping import TargetChange
from engine.registry import connector_for
from engine.routing import Router, region_prefix
from tests.helpers import assert_acknowledge_does_not_wait_for_the_read

NODE = """\
node: {id: city-110100, tier: city, region: "110100", parent: province-110000}
databases:
  biz: {url: "sqlite:///biz.db"}
  x: {url: "sqlite:///x.db"}
exchange:
  database: x
  links:
    province-110000: {role: parent, transport: exchange-db, inbox: "sqlite:///p.db"}
    county-110101: {role: child, region: "110101", transport: http, url: "http://c1:8443", key: k1}
    county-110102: {role: child, region: "110102", transport: http, url: "http://c2:8443", key: k2}
    emergency-110100: {role: peer, transport: exchange-db, inbox: "sqlite:///e.db"}
  tables:
    qy_jbxx: {key: [qyid], up: true, down: true, down_match: xzqh, across: [emergency-110100]}
    yh_jl: {key: [id], up: true, region_column: xzqh}
pipelines:
  - name: out
    source: {database: biz, tables: [enterprise]}
    target: {database: x, outbox: true}
    mappings: [{source: enterprise, target: qy_jbxx}]
  - name: in
    source: {database: x, capture: inbox, tables: [qy_jbxx]}
    target: {database: biz}
"""


def config(tmp_path, text=NODE):
    path = tmp_path / "node.yaml"
    path.write_text(text)
    return load_config(path)


def test_node_links_and_routes_load(tmp_path):
    loaded = config(tmp_path)
    assert loaded.node.parent == "province-110000"
    assert loaded.exchange.links["county-110101"].key.get_secret_value() == "k1"
    assert "k1" not in repr(loaded.exchange.links["county-110101"])  # secrets never printed


def test_link_and_route_problems_come_with_lines(tmp_path):
    bad = (NODE.replace("parent: province-110000}", "parent: province-990000}")
           .replace('county-110101: {role: child, region: "110101", transport: http, url: "http://c1:8443", key: k1}',
                    "county-110101: {role: child, transport: http, url: \"http://c1:8443\"}")
           .replace("across: [emergency-110100]", "across: [emergency-11010]")
           .replace("transport: exchange-db, inbox: \"sqlite:///e.db\"", "transport: ftp")
           .replace("tables: [qy_jbxx]", "tables: [qy_jbx]"))
    with pytest.raises(ConfigError) as error:
        config(tmp_path, bad)
    text = "\n".join(error.value.problems)
    assert ("node.yaml:11: exchange.links.emergency-110100.transport: Input should be 'exchange-db', 'http', "
            "'kafka', 'directory' or 'bundle' (got 'ftp')") in text
    bad = bad.replace("transport: ftp", "transport: exchange-db")
    with pytest.raises(ConfigError) as error:
        config(tmp_path, bad)
    problems = error.value.problems
    assert any(p.startswith(f"{tmp_path}/node.yaml:1: node.parent is 'province-990000'") for p in problems)
    assert any(":9: a child link needs the child's region code" in p for p in problems)
    assert any(":9: transport http needs key:" in p for p in problems)
    assert any(":13: across names 'emergency-11010', which is not a peer link (did you mean 'emergency-110100'?)"
               in p for p in problems)
    assert any(":21: 'qy_jbx' is not an exchange table (did you mean 'qy_jbxx'?)" in p for p in problems)
    with pytest.raises(ConfigError) as error:
        config(tmp_path, NODE.replace("  links:", "  linkz:"))
    assert "unknown key 'linkz' in exchange (did you mean 'links'?)" in str(error.value)


def test_region_prefixes():
    assert [region_prefix(c) for c in ("110000", "110100", "110101", "100000")] == ["11", "1101", "110101", "10"]


def test_routes_up_down_by_region_across_and_never_back(tmp_path):
    router = Router(config(tmp_path))
    row = {"qyid": 1, "xzqh": "110102"}
    assert router.destinations("qy_jbxx", row, "city-110100", ()) == [
        "province-110000", "county-110102", "emergency-110100"]
    # a change from county 110102 goes up and across, never back to where it came from
    assert router.destinations("qy_jbxx", row, "county-110102", ("county-110102",)) == [
        "province-110000", "emergency-110100"]
    # feedback from the province comes down only to the matching county
    assert router.destinations("qy_jbxx", {"xzqh": "110101"}, "national-100000",
                               ("national-100000", "province-110000")) == ["county-110101", "emergency-110100"]
    assert router.destinations("yh_jl", {"id": 1, "xzqh": "120101"}, "city-110100", ()) == []  # outside 1101
    assert router.destinations("yh_jl", {"id": 1, "xzqh": "110105"}, "city-110100", ()) == ["province-110000"]
    assert router.destinations("unrouted", row, "city-110100", ()) == []


def event(key, op=Op.CREATE, origin="county-110101", **after):
    return ChangeEvent(op, TableId(None, "qy_jbxx"), (key,), None, {"qyid": key, **after}, key, origin=origin,
                       path=(origin,), captured_at=datetime(2026, 11, 21, tzinfo=timezone.utc))


def test_batch_format_round_trips_and_refuses_damage():
    events = [event(1, xzqh="110101", zczb=Decimal("12.50"), 名称="安全化工"), event(2, op=Op.DELETE)]
    data = encode_batch(events)
    assert decode_batch(data) == events
    for damaged in (data[:-3], data[:10] + b"x" + data[11:], b"PK\x03\x04" + data[4:], b""):
        with pytest.raises(CorruptBatch):
            decode_batch(damaged)


def store(tmp_path):
    exchange = connector_for(f"sqlite:///{tmp_path}/x.db").exchange_store()
    exchange.ensure()
    return exchange


def test_inbox_reader_one_origin_per_read_resumes_mid_batch_and_ignores_repeats(tmp_path):
    inbox = store(tmp_path)
    first = [event(1), event(2), event(3, origin="county-110102"), event(4)]
    assert inbox.receive("city-110100", 1, "city-110100:me:1", encode_batch(first), 4, "me")
    assert not inbox.receive("city-110100", 1, "city-110100:me:1", encode_batch(first), 4, "me")  # repeat
    assert inbox.receive("city-110100", 3, "city-110100:me:3", encode_batch([event(9)]), 1, "me")  # 2 missing
    tables = {"qy_jbxx": TableId(None, "qy_jbxx")}
    reader = InboxReader(store(tmp_path), "in", tables, None, "me", ["in"], records_apply=True)
    read = reader.read(100)
    assert [e.key for e in read.events] == [(1,), (2,)]  # stops where the origin changes
    assert read.events[0].meta["batch"] == "city-110100:me:1"
    again = InboxReader(store(tmp_path), "in", tables, read.position, "me", ["in"], records_apply=True)
    second = again.read(100)
    assert [e.key for e in second.events] == [(3,)]
    third = again.read(100)
    assert [e.key for e in third.events] == [(4,)]
    assert again.read(100).events == []  # batch 2 never arrived: batch 3 waits
    again.acknowledge(third.position)
    assert sqlite3.connect(tmp_path / "x.db").execute("SELECT seq FROM tiersync_inbox").fetchall() == [(3,)]
    inbox.receive("city-110100", 2, "city-110100:me:2", encode_batch([event(5)]), 1, "me")
    assert [e.key for e in again.read(100).events] == [(5,), (9,)]


class _IdentityMapping:
    def map_row(self, row, event):
        return dict(row)


def test_outbox_sink_routes_stamps_the_path_and_never_sends_others_changes_as_new(tmp_path):
    outbox = store(tmp_path)
    cfg = config(tmp_path)
    sink = OutboxSink(outbox, Router(cfg), "city-110100", {TableId(None, "qy_jbxx"): _IdentityMapping()},
                      {"province-110000": 2}, from_capture=True)
    own = [event(k, origin="city-110100", xzqh="110101") for k in (1, 2, 3)]
    applied_here = event(4, origin="county-110101", xzqh="110101")
    changes = [TargetChange("upsert", TableId(None, "qy_jbxx"), e.key, e.after, e) for e in own + [applied_here]]
    sink.apply(Batch("out", changes, "sqlite:1", 4))
    assert sink.echoes_skipped == 1
    rows = sqlite3.connect(tmp_path / "x.db").execute(
        "SELECT link, seq, batch_id, payload FROM tiersync_outbox ORDER BY link, seq").fetchall()
    assert [(link, seq) for link, seq, _, _ in rows] == [
        ("county-110101", 1), ("emergency-110100", 1), ("province-110000", 1), ("province-110000", 2)]
    assert rows[2][2] == "city-110100:province-110000:1"
    sent = decode_batch(rows[2][3]) + decode_batch(rows[3][3])
    assert [e.key for e in sent] == [(1,), (2,), (3,)]
    assert {e.path for e in sent} == {("city-110100",)}
    assert outbox.load_checkpoint("out") == "sqlite:1"  # with the batches, in one transaction


def test_inbox_acknowledgement_runs_while_the_next_read_is_inside_its_statement(tmp_path):
    """The pipeline reads the next batch on its prefetch thread while it acknowledges the last one.

    The read is held inside its SELECT (a SQLite progress handler on the reading connection); the
    acknowledgement, on the pipeline's thread, must neither wait for it nor run on its connection — one
    connection stepped by two threads made acknowledgements fail under load ("another row available").
    """
    inbox = store(tmp_path)
    for seq in (1, 2, 3):
        assert inbox.receive("city-110100", seq, f"city-110100:me:{seq}", encode_batch([event(seq)]), 1, "me")
    reader = InboxReader(store(tmp_path), "in", {"qy_jbxx": TableId(None, "qy_jbxx")}, None, "me", ["in"],
                         records_apply=True)
    first = reader.read(1)
    assert [e.key for e in first.events] == [(1,)]
    assert_acknowledge_does_not_wait_for_the_read(reader, reader.store.conn, first.position, 1)
    assert sqlite3.connect(tmp_path / "x.db").execute("SELECT seq FROM tiersync_inbox").fetchall() == [(2,), (3,)]
    assert ("city-110100:me:1", "applied") in sqlite3.connect(tmp_path / "x.db").execute(
        "SELECT batch_id, status FROM tiersync_trace").fetchall()
    reader.close()
