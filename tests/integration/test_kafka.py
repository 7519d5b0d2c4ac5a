"""PostgreSQL → Kafka → PostgreSQL with a real broker (tansu) and real servers: exact values, schema
evolution, corrupt messages, and kill -9 of the producing and the consuming engine."""

from __future__ import annotations

import itertools
import json
import random
import struct
import time

import pytest

from tests.helpers import cli, pg_exec, pg_rows, run_once, spawn_engine, write_node

pytestmark = [pytest.mark.postgres, pytest.mark.kafka]

_prefixes = itertools.count()

DDL = """CREATE TABLE enterprise (
    id integer PRIMARY KEY,
    "企业名称" text NOT NULL,
    reg_capital numeric(18, 4),
    founded date,
    updated_at timestamptz,
    opens time,
    profile jsonb,
    logo bytea,
    uid uuid,
    score double precision,
    active boolean,
    note text)"""

ROWS = """INSERT INTO enterprise VALUES
 (1, '北京某某科技有限公司', 12345678901234.5678, '2001-02-03', '2026-11-21 08:00:00.123456+08', '08:30:00',
  '{"a": 1.10, "b": [1, 2.50]}', '\\x00ff10', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 0.1, true, NULL),
 (2, 'Ünïcode ''quoted'' name', -0.0001, NULL, NULL, NULL, NULL, NULL, NULL, 1e300, false, 'x'),
 (3, '第三家', 0, '1999-12-31', '1999-12-31 23:59:59+00', '23:59:59.999999', '[]', '', NULL, -2.5, NULL, '')"""


def _node(tmp_path, kafka_url, source, target, *, producer_batch=50, consumer_batch=70, history=False):
    """One node running both halves: the county's table into Kafka, and Kafka into the city's database."""
    down_url = kafka_url + ("&" if "?" in kafka_url else "?") + "node=county-110101"
    pipelines = [
        {"name": "up", "source": {"database": "county", "tables": ["enterprise"]},
         "target": {"database": "bus"}, "batch_size": producer_batch, "poll_interval": 0.05},
        {"name": "down", "source": {"database": "bus_in", "tables": ["enterprise"]},
         "target": {"database": "city"}, "batch_size": consumer_batch, "poll_interval": 0.05},
    ]
    if history:
        pipelines.append({"name": "history", "source": {"database": "bus_in", "tables": ["enterprise"]},
                          "target": {"database": "city", "mode": "append"}, "batch_size": 41, "poll_interval": 0.05,
                          "mappings": [{"source": "enterprise", "target": "enterprise_history",
                                        "metadata": {"op": "change_op", "seq": "change_seq"},
                                        "include_unlisted": False, "columns": {"id": "id"}}]})
    config = write_node(tmp_path / "node.yaml", {"county": source, "bus": kafka_url, "bus_in": down_url,
                                                 "city": target}, pipelines)
    cli("triggers", "install", "--config", str(config), "--pipeline", "up")
    return config


def _drain(config, names=("up", "down")):
    for name in names:
        run_once(config, name)


def _same(source, target, table="enterprise"):
    rows = f"SELECT * FROM {table} ORDER BY id"
    assert pg_rows(source, rows) == pg_rows(target, rows)


@pytest.fixture(params=["json", "avro"])
def fmt(request):
    return request.param


@pytest.fixture
def kafka_url(kafka_broker, fmt):
    return kafka_broker.url(f"t{next(_prefixes)}", format=fmt)


def test_postgres_to_kafka_to_postgres_exact_values(tmp_path, pg_databases, kafka_url, fmt):
    source, target = pg_databases
    pg_exec(source, DDL)
    pg_exec(target, DDL)
    config = _node(tmp_path, kafka_url, source, target)
    pg_exec(source, ROWS)
    _drain(config)
    _same(source, target)
    pg_exec(source, """UPDATE enterprise SET "企业名称" = '改名', reg_capital = reg_capital * 2 WHERE id = 1""",
            "DELETE FROM enterprise WHERE id = 2", "UPDATE enterprise SET id = 30 WHERE id = 3",
            "INSERT INTO enterprise (id, \"企业名称\") SELECT g, 'bulk ' || g FROM generate_series(100, 400) g")
    _drain(config)
    _same(source, target)
    assert pg_rows(target, "SELECT count(*) FROM enterprise") == [(303,)]
    assert pg_rows(target, "SELECT count(*) FROM tiersync.tiersync_dead_letter") == [(0,)]
    status = json.loads(cli("status", "--config", str(config), "--json").output)
    by_name = {p["name"]: p for p in status["pipelines"]}
    assert by_name["down"]["pending"] == 0 and not by_name["down"]["error"], by_name["down"]
    assert by_name["up"]["applied_position"].startswith("pglog:")


def test_schema_evolution_new_column_keeps_old_messages_readable(tmp_path, pg_databases, kafka_url, kafka_broker):
    source, target = pg_databases
    pg_exec(source, DDL)
    pg_exec(target, DDL, "ALTER TABLE enterprise ADD COLUMN \"联系电话\" text")
    config = _node(tmp_path, kafka_url, source, target)
    pg_exec(source, ROWS)
    run_once(config, "up")  # old-schema messages stay unread in the topic…
    pg_exec(source, "ALTER TABLE enterprise ADD COLUMN \"联系电话\" text")
    cli("triggers", "install", "--config", str(config), "--pipeline", "up")  # the trigger learns the column
    pg_exec(source, "INSERT INTO enterprise (id, \"企业名称\", \"联系电话\") VALUES (4, '新', '010-12345678')",
            "UPDATE enterprise SET \"联系电话\" = '021' WHERE id = 1")
    run_once(config, "up")  # …while new ones carry the grown schema
    run_once(config, "down")
    _same(source, target)
    assert pg_rows(target, "SELECT \"联系电话\" FROM enterprise WHERE id = 4") == [("010-12345678",)]
    if "avro" in kafka_url:
        ids = _schema_ids(kafka_broker, kafka_url, "county-110101.public.enterprise")
        assert len(ids) == 2, ids  # a new schema id for the grown table; both still decode


def _schema_ids(broker, url, topic_suffix):
    from kafka import KafkaConsumer, TopicPartition

    prefix = url.split("/")[3].split("?")[0]
    client = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False, consumer_timeout_ms=2000)
    tp = TopicPartition(f"{prefix}._schemas", 0)
    client.assign([tp])
    client.seek(tp, 0)
    docs = [json.loads(r.value) for r in client]
    ids = {d["id"] for d in docs if d["subject"].endswith(topic_suffix + "-value")}
    client.close()
    return ids


def test_corrupt_messages_go_to_dead_letters_with_a_reason(tmp_path, pg_databases, kafka_url, kafka_broker, fmt):
    from kafka import KafkaProducer

    source, target = pg_databases
    pg_exec(source, DDL)
    pg_exec(target, DDL)
    config = _node(tmp_path, kafka_url, source, target)
    pg_exec(source, "INSERT INTO enterprise (id, \"企业名称\") VALUES (1, 'one')")
    run_once(config, "up")
    prefix = kafka_url.split("/")[3].split("?")[0]
    topic = f"{prefix}.county-110101.public.enterprise"
    hostile = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
    if fmt == "avro":
        bad = [b"\x07garbage", b"\x00" + struct.pack(">I", 123456789) + b"\x02\x04"]
        reasons = ["bad magic byte 0x07", "unknown schema id 123456789"]
    else:
        bad = [b"{not json", b'{"hello": "world"}']
        reasons = ["not valid JSON", "not a change envelope"]
    for value in bad:
        hostile.send(topic, key=b'{"id": 99}', value=value)
    hostile.flush()
    hostile.close()
    pg_exec(source, "INSERT INTO enterprise (id, \"企业名称\") VALUES (2, 'two')")
    _drain(config)
    _same(source, target)  # the good messages around the bad ones are applied
    letters = pg_rows(target, "SELECT error FROM tiersync.tiersync_dead_letter ORDER BY id")
    assert len(letters) == 2, letters
    for (error,), reason in zip(letters, reasons):
        assert reason in error and "offset" in error
    run_once(config, "down")  # read again from the checkpoint: nothing doubled
    assert len(pg_rows(target, "SELECT error FROM tiersync.tiersync_dead_letter")) == 2


# ---------------------------------------------------------------------- crashes

from tests.helpers import AUDIT_DDL  # noqa: E402
from tests.integration.test_postgres_crash import DDL as ITEM_DDL  # noqa: E402
from tests.integration.test_postgres_crash import HISTORY_DDL, Workload  # noqa: E402


@pytest.fixture
def item_node(tmp_path, pg_databases, kafka_broker, fmt):
    """item: county → Kafka → city, mirrored and appended as history (which shows every change once)."""
    source, target = pg_databases
    pg_exec(source, ITEM_DDL)
    pg_exec(target, ITEM_DDL, HISTORY_DDL)
    url = kafka_broker.url(f"crash{next(_prefixes)}", format=fmt, partitions="3")
    config = write_node(tmp_path / "node.yaml", {"county": source, "bus": url, "bus_in": url + "&node=county-110101",
                                                 "city": target}, [
        {"name": "up", "source": {"database": "county", "tables": ["item"]}, "target": {"database": "bus"},
         "batch_size": 29, "poll_interval": 0.05},
        {"name": "down", "source": {"database": "bus_in", "tables": ["item"]}, "target": {"database": "city"},
         "batch_size": 37, "poll_interval": 0.05},
        {"name": "history", "source": {"database": "bus_in", "tables": ["item"]},
         "target": {"database": "city", "mode": "append"}, "batch_size": 53, "poll_interval": 0.05,
         "mappings": [{"source": "item", "target": "item_history",
                       "metadata": {"op": "change_op", "captured_at": "captured_at", "seq": "change_seq"}}]},
    ])
    cli("triggers", "install", "--config", str(config), "--pipeline", "up")
    pg_exec(source, *AUDIT_DDL)
    return config, source, target


def assert_exactly_once(source: str, target: str) -> None:
    assert pg_rows(source, "SELECT * FROM item ORDER BY id") == pg_rows(target, "SELECT * FROM item ORDER BY id")
    history = [r[0] for r in pg_rows(target, "SELECT change_seq FROM item_history ORDER BY change_seq")]
    committed = [r[0] for r in pg_rows(source, "SELECT id FROM committed_change ORDER BY id")]
    assert len(history) == len(set(history)), "a change was applied twice"
    assert history == committed, "a change was lost"
    assert pg_rows(target, "SELECT count(*) FROM tiersync.tiersync_dead_letter") == [(0,)]


def _drain_all(config):
    for name in ("up", "down", "history"):
        run_once(config, name)


FOUR_TRANSACTIONS = [f"INSERT INTO item SELECT g, 'x', g, NULL FROM generate_series({lo}, {lo + 24}) g"
                     for lo in (1, 26, 51, 76)]


def test_producer_dying_before_its_checkpoint_sends_the_batch_again_without_doubles(item_node, monkeypatch):
    """A sink that sent a batch but died before its checkpoint: the batch goes again; consumers take it once."""
    from connectors.kafka.session import KafkaSink
    from engine.errors import TransientError

    config, source, target = item_node
    pg_exec(source, *FOUR_TRANSACTIONS)
    real_commit, crashes = KafkaSink.commit, []

    def commit_then_die(self):
        if not crashes:
            self._settle(self._sent)  # the messages are in the topic…
            crashes.append(len(self._sent))
            raise TransientError("simulated crash before the checkpoint")  # …but no checkpoint, no marker
        real_commit(self)
    monkeypatch.setattr(KafkaSink, "commit", commit_then_die)
    _drain_all(config)
    assert crashes[0] == 25  # batches of 29 end where a source transaction does
    assert_exactly_once(source, target)


def test_producer_dying_between_checkpoint_and_markers_repairs_them(item_node, monkeypatch):
    from connectors.kafka.session import KafkaSink
    from engine.errors import TransientError

    config, source, target = item_node
    pg_exec(source, *FOUR_TRANSACTIONS)
    real_mark, crashes = KafkaSink._mark, []

    def die_before_markers(self, pipeline, seq, attempt, partitions):
        if not crashes and seq == 2:
            crashes.append(seq)
            raise TransientError("simulated crash after the checkpoint")
        real_mark(self, pipeline, seq, attempt, partitions)
    monkeypatch.setattr(KafkaSink, "_mark", die_before_markers)
    _drain_all(config)
    assert crashes == [2]
    assert_exactly_once(source, target)


@pytest.mark.slow
def test_kill_9_of_producing_and_consuming_engines_loses_and_doubles_nothing(item_node, tmp_path, fmt):
    config, source, target = item_node
    workload = Workload(source, seed=61)
    workload.start()
    chance = random.Random(6)
    log = tmp_path / "engine.log"
    try:
        for _ in range(6):
            engines = {name: spawn_engine(config, "--pipeline", name, log=log) for name in ("up", "down", "history")}
            for name in chance.sample(list(engines), 3):  # each dies at its own random moment
                time.sleep(chance.uniform(0.2, 1.2))
                engines[name].kill()
            for engine in engines.values():
                engine.wait()
    finally:
        workload.stop.set()
        workload.join(10)
    assert workload.transactions > 50
    _drain_all(config)
    assert_exactly_once(source, target)


def test_a_new_consumer_bootstraps_from_a_compacted_topic(tmp_path, pg_server, pg_databases, kafka_broker, fmt):
    """compact=true: topics keyed by primary key with tombstones after deletes; a consumer that starts later
    reads the topic from the start and ends equal to the source."""
    source, target = pg_databases
    late = pg_server.create_database(f"late_{next(_prefixes)}")
    for url in (source, target, late):
        pg_exec(url, DDL)
    kafka_url = kafka_broker.url(f"compact{next(_prefixes)}", format=fmt, compact="true", partitions="2")
    config = _node(tmp_path, kafka_url, source, target)
    pg_exec(source, ROWS, "DELETE FROM enterprise WHERE id = 2", "UPDATE enterprise SET note = 'n' WHERE id = 1")
    _drain(config)
    pg_exec(source, "INSERT INTO enterprise (id, \"企业名称\") VALUES (5, '后来')",
            "DELETE FROM enterprise WHERE id = 3")
    run_once(config, "up")
    late_config = write_node(tmp_path / "late.yaml", {"bus_in": kafka_url + "&node=county-110101", "late": late}, [
        {"name": "bootstrap", "source": {"database": "bus_in", "tables": ["enterprise"]},
         "target": {"database": "late"}}], node_id="city-110100")
    run_once(late_config)
    _same(source, late)
    assert pg_rows(late, "SELECT count(*) FROM tiersync.tiersync_dead_letter") == [(0,)]


class RegistryServer:
    """The part of the Confluent Schema Registry REST API tiersync uses (register, by id, latest), in memory.

    No Confluent registry package is reachable here; this follows its documented endpoints and answers.
    """

    def __init__(self):
        import http.server
        import threading

        schemas, subjects = {}, {}
        self.requests = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, code, doc):
                body = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):  # noqa: N802 - http.server's naming
                from urllib.parse import unquote

                server.requests.append(("POST", self.path))
                subject = unquote(self.path.split("/")[2])
                text = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["schema"]
                ids = {v: k for k, v in schemas.items()}
                id_ = ids.get(text) or len(schemas) + 1
                schemas[id_] = text
                if id_ not in subjects.setdefault(subject, []):
                    subjects[subject].append(id_)
                self._answer(200, {"id": id_})

            def do_GET(self):  # noqa: N802
                from urllib.parse import unquote

                server.requests.append(("GET", self.path))
                parts = [unquote(p) for p in self.path.strip("/").split("/")]
                if parts[:2] == ["schemas", "ids"] and int(parts[2]) in schemas:
                    return self._answer(200, {"schema": schemas[int(parts[2])]})
                if parts[0] == "subjects" and parts[2:] == ["versions", "latest"] and parts[1] in subjects:
                    id_ = subjects[parts[1]][-1]
                    return self._answer(200, {"subject": parts[1], "id": id_, "version": len(subjects[parts[1]]),
                                              "schema": schemas[id_]})
                self._answer(404, {"error_code": 40401, "message": "not found"})

            def log_message(self, *args):
                pass

        server = self
        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self):
        self.http.shutdown()


def test_avro_with_a_confluent_compatible_registry(tmp_path, pg_databases, kafka_broker):
    registry = RegistryServer()
    try:
        source, target = pg_databases
        pg_exec(source, DDL)
        pg_exec(target, DDL)
        url = kafka_broker.url(f"reg{next(_prefixes)}", format="avro", registry=registry.url)
        config = _node(tmp_path, url, source, target)
        pg_exec(source, ROWS)
        _drain(config)
        _same(source, target)
        subject = "/subjects/" + url.split("/")[3].split("?")[0] + ".county-110101.public.enterprise-value"
        assert ("POST", subject.replace(".", "%2E") + "/versions") in registry.requests or \
            ("POST", subject + "/versions") in registry.requests, registry.requests
        assert ("GET", subject + "/versions/latest") in registry.requests, registry.requests
        from connectors.kafka.connection import KafkaUrl
        from connectors.kafka.schemas import SchemaRegistry

        fresh = SchemaRegistry(KafkaUrl.parse(url))  # a consumer meeting an id it has not seen asks for it
        assert fresh.by_id(1).table.column_names[1] == "企业名称"
        assert fresh.by_id(999) is None
    finally:
        registry.close()


def test_parents_arrive_before_children_across_topics(tmp_path, pg_databases, kafka_broker, fmt):
    """Parent and child rows travel in different topics; the target's foreign key holds at every commit
    because batches are handed over whole and in order."""
    source, target = pg_databases
    ddl = ["CREATE TABLE org (id integer PRIMARY KEY, name text)",
           "CREATE TABLE staff (id integer PRIMARY KEY, org_id integer NOT NULL REFERENCES org, name text)"]
    pg_exec(source, *ddl)
    pg_exec(target, *ddl)
    url = kafka_broker.url(f"fk{next(_prefixes)}", format=fmt, partitions="3")
    config = write_node(tmp_path / "node.yaml", {"county": source, "bus": url, "bus_in": url + "&node=county-110101",
                                                 "city": target}, [
        {"name": "up", "source": {"database": "county", "tables": ["org", "staff"]}, "target": {"database": "bus"},
         "batch_size": 7},
        {"name": "down", "source": {"database": "bus_in", "tables": ["org", "staff"]},
         "target": {"database": "city"}, "batch_size": 1}])
    cli("triggers", "install", "--config", str(config), "--pipeline", "up")
    for i in range(1, 41):
        pg_exec(source, f"INSERT INTO org VALUES ({i}, 'org {i}')", f"INSERT INTO staff VALUES ({i}, {i}, 's')")
    pg_exec(source, "DELETE FROM staff WHERE id <= 10", "DELETE FROM org WHERE id <= 10")
    run_once(config, "up")
    run_once(config, "down")
    assert pg_rows(target, "SELECT count(*) FROM tiersync.tiersync_dead_letter") == [(0,)]
    for table in ("org", "staff"):
        _same(source, target, table)
