"""The kafka transport against a real Kafka-compatible broker: JSON and Avro, Chinese column names, kill -9."""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time

import pytest
from kafka.partitioner.default import murmur2

from connectors.kafka.connection import read_to_end
from connectors.kafka.schemas import column_name
from tests.exchange_nodes import capture_out, inbox_in, kill_9_both_sides, node_file, q, sqlite_copy, sqlite_db
from tests.helpers import cli, run_once

CITY_DDL = ('CREATE TABLE qy (qyid INTEGER PRIMARY KEY, "企业名称" TEXT, zczb NUMERIC, clrq TEXT)',
            'CREATE TABLE qy_history (hid INTEGER PRIMARY KEY, qyid INTEGER, "企业名称" TEXT, zczb NUMERIC, '
            'clrq TEXT, op TEXT, change_seq INTEGER UNIQUE)')


def nodes(tmp_path, broker, fmt: str, tag: str, helper_from: int = 0, compression: str = "lz4"):
    county_id, city_id = f"county-{tag}", f"city-{tag}"
    link = {"transport": "kafka", "brokers": [broker.bootstrap], "format": fmt, "partitions": 3, "batch_size": 50,
            "helper_from": helper_from, "compression": compression}
    route = {"qy_jbxx": {"key": ["qyid"], "up": True}}
    county = node_file(
        tmp_path / "county.yaml", {"id": county_id, "tier": "county", "region": "110101", "parent": city_id},
        {"biz": sqlite_db(tmp_path / "county.db", "CREATE TABLE enterprise (id INTEGER PRIMARY KEY, name TEXT, "
                                                  "capital NUMERIC(12,2), founded DATE)"),
         "x": f"sqlite:///{tmp_path}/county-x.db"},
        {"database": "x", "poll_interval": 0.05, "tables": route, "links": {city_id: {"role": "parent", **link}}},
        [capture_out("biz", "x", "enterprise", "qy_jbxx",
                     {"id": "qyid", "name": "企业名称", "capital": "zczb", "founded": "clrq"}, batch_size=120)])
    city = node_file(
        tmp_path / "city.yaml", {"id": city_id, "tier": "city", "region": "110100"},
        {"biz": sqlite_db(tmp_path / "city.db", *CITY_DDL), "x": f"sqlite:///{tmp_path}/city-x.db"},
        {"database": "x", "poll_interval": 0.05, "tables": route,
         "links": {county_id: {"role": "child", "region": "110101", **link}}},
        [inbox_in("x", "biz", "qy_jbxx", "qy", batch_size=70),
         {"name": "history", "source": {"database": "x", "capture": "inbox", "tables": ["qy_jbxx"]},
          "target": {"database": "biz", "mode": "append"}, "poll_interval": 0.05, "batch_size": 45,
          "mappings": [{"source": "qy_jbxx", "target": "qy_history", "metadata": {"op": "op", "seq": "change_seq"}}]}])
    cli("triggers", "install", "--config", str(county), "--pipeline", "enterprise-out")
    with sqlite3.connect(tmp_path / "county.db") as conn:
        conn.execute("CREATE TABLE committed_change (id INTEGER PRIMARY KEY)")
        conn.execute("CREATE TRIGGER witness AFTER INSERT ON tiersync_change_log "
                     "BEGIN INSERT INTO committed_change VALUES (NEW.id); END")
    return county, city, county_id, city_id


def topic_messages(broker, topic):
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False, group_id=None,
                             auto_offset_reset="earliest")
    try:
        return read_to_end(consumer, [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)])
    finally:
        consumer.close()


def in_sync(tmp):
    county = q(tmp / "county.db", "SELECT id, name, CAST(capital AS TEXT), founded FROM enterprise ORDER BY id")
    city = q(tmp / "city.db", 'SELECT qyid, "企业名称", CAST(zczb AS TEXT), clrq FROM qy ORDER BY qyid')
    committed = [r[0] for r in q(tmp / "county.db", "SELECT id FROM committed_change ORDER BY id")]
    history = [r[0] for r in q(tmp / "city.db", "SELECT change_seq FROM qy_history ORDER BY change_seq")]
    return county == city and history == committed


@pytest.mark.parametrize("maker", ["here", "helper"])
@pytest.mark.parametrize("fmt", ["json", "avro"])
def test_debezium_envelopes_on_per_table_topics(tmp_path, kafka_broker, fmt, maker):
    # with "helper", every send's messages are made and every poll's read in helper processes, as a busy link's
    county, city, county_id, city_id = nodes(tmp_path, kafka_broker, fmt, f"{fmt}{random.randrange(10**6)}",
                                             helper_from=1 if maker == "helper" else 0)
    with sqlite3.connect(tmp_path / "county.db") as conn:
        conn.executemany("INSERT INTO enterprise VALUES (?, ?, ?, ?)",
                         [(i, f"企业{i}", f"{i}.25", "2020-01-02") for i in range(1, 201)])
        conn.execute("UPDATE enterprise SET capital = capital * 2 WHERE id % 3 = 0")
        conn.execute("DELETE FROM enterprise WHERE id % 7 = 0")
    run_once(county)
    run_once(city)
    assert in_sync(tmp_path)
    messages = topic_messages(kafka_broker, f"{county_id}.{city_id}.qy_jbxx")
    assert len(messages) == 200 + 66 + 28
    first = messages[0]
    assert json.loads(first.key) == {"qyid": json.loads(first.key)["qyid"]}  # key = the primary key
    # three partitions: each key where the Java client's default partitioner puts it (a one-partition topic's
    # messages name partition 0 instead, to skip kafka-python's hashing)
    assert {m.partition for m in messages} == {0, 1, 2}
    assert all(m.partition == (murmur2(m.key) & 0x7FFFFFFF) % 3 for m in messages)
    if fmt == "json":
        value = json.loads(first.value)
        assert value["op"] == "c" and value["source"]["table"] == "qy_jbxx" and "企业名称" in value["after"]
    else:
        assert first.value[0] == 0  # Confluent wire format: magic byte, 4-byte schema id, Avro body
        schema_id = int.from_bytes(first.value[1:5], "big")
        schemas = {int(m.key): json.loads(m.value) for m in topic_messages(kafka_broker, "_tiersync_schemas")}
        fields = schemas[schema_id]["fields"][0]["type"][1]["fields"]
        assert [column_name(f["name"]) for f in fields] == ["qyid", "企业名称", "zczb", "clrq"]
    # the same messages again (a sender that crashed before it marked them sent): nothing changes
    with sqlite3.connect(tmp_path / "county-x.db") as conn:
        conn.execute("UPDATE tiersync_outbox SET acked_at = NULL")
    run_once(county)
    run_once(city)
    assert len(topic_messages(kafka_broker, f"{county_id}.{city_id}.qy_jbxx")) == 2 * (200 + 66 + 28)
    assert in_sync(tmp_path)
    assert q(tmp_path / "city.db", "SELECT count(*) FROM tiersync_dead_letter") == [(0,)]


def test_avro_schema_evolves_when_a_column_is_added(tmp_path, kafka_broker):
    county, city, county_id, city_id = nodes(tmp_path, kafka_broker, "avro", f"evo{random.randrange(10**6)}")
    with sqlite3.connect(tmp_path / "county.db") as conn:
        conn.execute("INSERT INTO enterprise VALUES (1, '甲', 1, '2020-01-01')")
    run_once(county)
    for db, table in (("county.db", "enterprise"), ("city.db", "qy"), ("city.db", "qy_history")):
        with sqlite3.connect(tmp_path / db) as conn:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN 联系电话 TEXT")
    cli("triggers", "install", "--config", str(county), "--pipeline", "enterprise-out")
    with sqlite3.connect(tmp_path / "county.db") as conn:
        conn.execute("DROP TRIGGER tiersync_enterprise_ins")
    cli("triggers", "install", "--config", str(county), "--pipeline", "enterprise-out")  # triggers see the column
    with sqlite3.connect(tmp_path / "county.db") as conn:
        conn.execute("INSERT INTO enterprise VALUES (2, '乙', 2, '2020-01-02', '010-1234')")
    run_once(county)
    run_once(city)
    assert q(tmp_path / "city.db", 'SELECT qyid, "联系电话" FROM qy ORDER BY qyid') == [(1, None), (2, "010-1234")]
    ids = {m.value[1:5] for m in topic_messages(kafka_broker, f"{county_id}.{city_id}.qy_jbxx")}
    assert len(ids) == 2  # a second, wider schema for the same topic


class Workload(threading.Thread):
    def __init__(self, path, seed):
        super().__init__(daemon=True)
        self.path, self.random, self.stop, self.transactions = path, random.Random(seed), threading.Event(), 0

    def run(self):
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        while not self.stop.is_set():
            i, r = self.random.randrange(1, 300), self.random.random()
            conn.execute("BEGIN IMMEDIATE")
            if r < 0.6:
                conn.execute("INSERT INTO enterprise VALUES (?, ?, ?, '2021-03-04') ON CONFLICT (id) DO UPDATE "
                             "SET name = name || '+'", (i, f"企业{i}", f"{i}.5"))
            elif r < 0.85:
                conn.execute("UPDATE enterprise SET capital = capital + 1 WHERE id BETWEEN ? AND ?", (i, i + 2))
            else:
                conn.execute("DELETE FROM enterprise WHERE id = ?", (i,))
            conn.execute("COMMIT")
            self.transactions += 1
            time.sleep(0.003)
        conn.close()


def test_kill_9_of_either_side_over_kafka_loses_and_doubles_nothing(tmp_path, kafka_broker):
    # helper processes on both sides, killed with their nodes
    county, city, _, _ = nodes(tmp_path, kafka_broker, "avro", f"k9{random.randrange(10**6)}", helper_from=1)
    workload = Workload(tmp_path / "county.db", 5)
    workload.start()
    try:
        kill_9_both_sides(county, city, tmp_path, rounds=5, seed=11, run_for=(1.0, 2.5), both=0.4, gap=0.7)
    finally:
        workload.stop.set()
        workload.join(10)
    assert workload.transactions > 100
    run_once(county)
    deadline = time.monotonic() + 60
    while not in_sync(tmp_path):
        assert time.monotonic() < deadline, "the city never caught up"
        run_once(city)
    assert q(tmp_path / "city.db", "SELECT count(*) FROM tiersync_dead_letter") == [(0,)]


def test_a_restored_sender_is_taken_up_again_over_kafka(tmp_path, kafka_broker):
    county, city, county_id, city_id = nodes(tmp_path, kafka_broker, "avro", f"seq{random.randrange(10**6)}")
    with sqlite3.connect(tmp_path / "county.db") as conn:
        conn.executemany("INSERT INTO enterprise VALUES (?, ?, '1.50', '2020-01-02')",
                         [(i, f"企业{i}") for i in range(1, 51)])  # batch 1
    run_once(county)
    run_once(city)
    sqlite_copy(tmp_path / "county-x.db", tmp_path / "backup.db")
    with sqlite3.connect(tmp_path / "county.db") as conn:
        conn.executemany("INSERT INTO enterprise VALUES (?, ?, '2.50', '2020-01-02')",
                         [(i, f"企业{i}") for i in range(51, 101)])  # batch 2
    run_once(county)
    run_once(city)
    assert in_sync(tmp_path)
    sqlite_copy(tmp_path / "backup.db", tmp_path / "county-x.db")  # restored: the next batch is 2 again
    with sqlite3.connect(tmp_path / "county.db") as conn:
        conn.execute("UPDATE enterprise SET name = '新名' WHERE id <= 30")
    run_once(county)
    run_once(city)
    assert not in_sync(tmp_path)  # the receiving end took the new batch 2 for the old one and dropped it
    cli("inbox", "accept-sequence", "--config", str(city), "--sender", county_id, "--from", "2")
    cli("outbox", "resend", "--config", str(county), "--link", city_id, "--from", "2")
    run_once(county)
    run_once(city)
    assert in_sync(tmp_path)
    assert q(tmp_path / "city.db", "SELECT count(*) FROM qy WHERE \"企业名称\" = '新名'") == [(30,)]


def test_a_lost_helper_or_a_failed_schema_publish_fails_the_send_and_the_next_send_is_complete(tmp_path, kafka_broker,
                                                                                               monkeypatch):
    """A busy link makes its messages in a helper process. When that process dies, or a schema it registered
    could not be published, the send fails (to be retried) and the retry starts a fresh helper, so every
    message on the topic names a schema the topic's registry holds."""
    import multiprocessing
    import os
    import signal

    import kafka.errors

    from engine.batchcodec import encode_batch
    from engine.config import load_config
    from engine.errors import TransientError
    from engine.event import ChangeEvent, Op, TableId
    from engine.exchange import OutgoingBatch
    from transports.kafka import KafkaTransport, _schema_registry
    from transports.kafka_avro import LinkReader

    county, _, county_id, city_id = nodes(tmp_path, kafka_broker, "avro", f"lost{random.randrange(10**6)}",
                                          helper_from=1)
    config = load_config(county)

    def batch(seq: int, columns: tuple[str, ...]) -> OutgoingBatch:
        events = [ChangeEvent(Op.CREATE, TableId(None, "qy_jbxx"), (seq * 100 + i,), None,
                              {"qyid": seq * 100 + i, **{c: f"{c}{i}" for c in columns}}, i, origin=county_id,
                              path=(county_id,)) for i in range(10)]
        return OutgoingBatch(city_id, seq, f"batch-{seq}", encode_batch(events), len(events))

    transport = KafkaTransport(county_id, city_id, config.exchange.links[city_id], config)
    try:
        assert transport.send_all([batch(1, ("企业名称",))]) == [True]
        for helper in multiprocessing.active_children():
            os.kill(helper.pid, signal.SIGKILL)
        with pytest.raises(TransientError, match="died"):
            transport.send_all([batch(2, ("企业名称",))])
        publish = KafkaTransport._publish

        def fails_once(self, *args):
            monkeypatch.setattr(KafkaTransport, "_publish", publish)
            raise kafka.errors.KafkaTimeoutError("the broker did not answer")
        monkeypatch.setattr(KafkaTransport, "_publish", fails_once)
        with pytest.raises(TransientError, match="did not answer"):  # a new column: a new schema to publish
            transport.send_all([batch(3, ("企业名称", "zczb"))])
        assert transport.send_all([batch(2, ("企业名称",)), batch(3, ("企业名称", "zczb"))]) == [True, True]
    finally:
        transport.close()
    reader = LinkReader(_schema_registry([kafka_broker.bootstrap]))
    rows = [json.loads(reader.to_json(m.value))["after"]
            for m in topic_messages(kafka_broker, f"{county_id}.{city_id}.qy_jbxx")]
    assert sorted(r["qyid"] for r in rows) == [seq * 100 + i for seq in (1, 2, 3) for i in range(10)]
    assert all(("zczb" in r) == (r["qyid"] >= 300) for r in rows)


def _outgoing(county_id: str, city_id: str, seq: int, count: int):
    from engine.batchcodec import encode_batch
    from engine.event import ChangeEvent, Op, TableId
    from engine.exchange import OutgoingBatch

    events = [ChangeEvent(Op.CREATE, TableId(None, "qy_jbxx"), (seq * 1000 + i,), None,
                          {"qyid": seq * 1000 + i, "企业名称": f"北京某某科技有限公司{i}", "zczb": "100.50"}, i,
                          origin=county_id, path=(county_id,)) for i in range(count)]
    return OutgoingBatch(city_id, seq, f"{county_id}:{city_id}:{seq}", encode_batch(events), len(events))


@pytest.mark.parametrize("codec", ["lz4", "zstd", "gzip", "none"])
def test_record_batches_are_compressed_as_the_link_says_and_read_back(tmp_path, kafka_broker, codec):
    from engine.config import load_config
    from transports.kafka import KafkaReceiver, KafkaTransport

    county, city, county_id, city_id = nodes(tmp_path, kafka_broker, "json", f"{codec}{random.randrange(10**6)}",
                                             compression=codec)
    config = load_config(county)
    transport = KafkaTransport(county_id, city_id, config.exchange.links[city_id], config)
    try:
        assert transport.send_all([_outgoing(county_id, city_id, 1, 300)]) == [True]
        rate = transport._producer.metrics()[f"producer-topic-metrics.{county_id}.{city_id}.qy_jbxx"]
        # compressed size / uncompressed size of the record batches sent
        assert rate["compression-rate"] < 0.5 if codec != "none" else rate["compression-rate"] == 1.0
    finally:
        transport.close()
    KafkaReceiver(load_config(city), county_id, threading.Event()).run(once=True)
    assert q(tmp_path / "city-x.db", "SELECT seq, events FROM tiersync_inbox") == [(1, 300)]


def test_a_codec_a_node_cannot_use_is_a_clear_error_at_either_end(tmp_path, kafka_broker, monkeypatch):
    import kafka.codec

    from engine.config import load_config
    from engine.errors import TerminalError
    from transports.kafka import KafkaReceiver, KafkaTransport

    county, city, county_id, city_id = nodes(tmp_path, kafka_broker, "json", f"codec{random.randrange(10**6)}",
                                             compression="zstd")
    config = load_config(county)
    transport = KafkaTransport(county_id, city_id, config.exchange.links[city_id], config)
    try:
        assert transport.send_all([_outgoing(county_id, city_id, 1, 20)]) == [True]
    finally:
        transport.close()
    monkeypatch.setattr(kafka.codec, "has_zstd", lambda: False)  # as on a node without the zstandard package
    with pytest.raises(TerminalError, match="codec this node cannot read"):
        KafkaReceiver(load_config(city), county_id, threading.Event()).run(once=True)
    assert q(tmp_path / "city-x.db", "SELECT count(*) FROM tiersync_inbox") == [(0,)]
    transport = KafkaTransport(county_id, city_id, config.exchange.links[city_id], config)
    with pytest.raises(TerminalError, match="compression zstd needs the zstandard package"):
        transport.send_all([_outgoing(county_id, city_id, 2, 20)])
