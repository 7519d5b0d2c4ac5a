"""Changes tiersync applies to PostgreSQL name their origin node for log-based capture, at any number of nodes.

One replication origin per applying pipeline, and a transactional origin message before each run of rows
of one node (connectors/postgres/origins.py): a target fed by 100 nodes on a server with
``max_replication_slots = 10`` still attributes every captured row to the node it came from.
"""

from __future__ import annotations

import random
import time
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest

from connectors.postgres.logical_reader import PostgresLogicalReader
from connectors.postgres.session import PostgresSession
from engine.batchcodec import encode_batch
from engine.event import ChangeEvent, Op, TableId
from engine.registry import connector_for
from engine.schema import ColumnInfo, TableInfo
from engine.seams import CapturedTable
from tests.exchange_nodes import node_file, q, sqlite_db
from tests.helpers import cli, pg_exec, pg_rows, run_once, spawn_engine

pytestmark = pytest.mark.postgres

NODES = [f"county-{i:03d}" for i in range(100)]
CITY = "city-110100"
DDL = "CREATE TABLE qy_jbxx (qyid integer PRIMARY KEY, qymc text, xzqh text)"


@pytest.fixture(scope="module")
def few_slots():
    """A logical server with room for only 10 replication origins (they share max_replication_slots)."""
    from tests.harness.postgres import PostgresServer

    server = PostgresServer({"wal_level": "logical", "max_replication_slots": "10", "max_wal_senders": "10"})
    server.init().start()
    yield server
    server.destroy()


def event(op: Op, key: int, origin: str, name: str | None = None) -> ChangeEvent:
    row = {"qyid": key, "qymc": name or f"企业{key}", "xzqh": "110101"}
    return ChangeEvent(op, TableId(None, "qy_jbxx"), (key,), row if op is Op.DELETE else None,
                       None if op is Op.DELETE else row, key, origin=origin, path=(origin,),
                       captured_at=datetime(2026, 11, 21, tzinfo=timezone.utc))


def city_node(tmp_path: Path, city: str, x: str, inbox_batch: int = 1000) -> Path:
    """The city: ``qy-in`` applies its inbox into ``city``; ``qy-wal`` captures ``city`` from the WAL into
    seen.db's qy_seen, one row per captured change with its op and origin (its slot is created)."""
    seen = sqlite_db(tmp_path / "seen.db", "CREATE TABLE qy_seen (n INTEGER PRIMARY KEY AUTOINCREMENT, "
                                           "qyid INTEGER, qymc TEXT, xzqh TEXT, op TEXT, origin TEXT)")
    config = node_file(
        tmp_path / "city.yaml", {"id": CITY, "tier": "city", "region": "110100"},
        {"biz": city, "x": x, "seen": seen}, {"database": "x", "tables": {"qy_jbxx": {"key": ["qyid"]}}, "links": {}},
        [{"name": "qy-in", "source": {"database": "x", "capture": "inbox", "tables": ["qy_jbxx"]},
          "target": {"database": "biz"}, "batch_size": inbox_batch, "poll_interval": 0.05,
          "mappings": [{"source": "qy_jbxx", "target": "qy_jbxx"}]},
         {"name": "qy-wal", "source": {"database": "biz", "capture": "logical", "tables": ["qy_jbxx"]},
          "target": {"database": "seen", "mode": "append"}, "batch_size": 37,
          "mappings": [{"source": "qy_jbxx", "target": "qy_seen", "metadata": {"op": "op", "origin": "origin"}}]}])
    cli("slot", "create", "--config", str(config), "--pipeline", "qy-wal")
    return config


def test_a_hundred_origin_nodes_into_one_target_are_each_attributed(tmp_path, few_slots):
    city = few_slots.create_database("city_hundred")
    pg_exec(city, DDL)
    x = sqlite_db(tmp_path / "x.db")
    store = connector_for(x).exchange_store()
    store.ensure()
    expected = []  # (key, op, origin) of every change capture must see
    for i, node in enumerate(NODES):  # each county: three inserts
        first = [event(Op.CREATE, k, node) for k in (i * 10 + 1, i * 10 + 2, i * 10 + 3)]
        store.receive(node, 1, f"{node}:{CITY}:1", encode_batch(first), 3, CITY)
        expected += [(e.key[0], "c", node) for e in first]
    # relayed by a province: the origin is the national node, not the sender
    store.receive("province-110000", 1, f"province-110000:{CITY}:1",
                  encode_batch([event(Op.CREATE, 9001, "national-100000")]), 1, CITY)
    expected.append((9001, "c", "national-100000"))

    def then_update_and_delete() -> None:  # applied apart from the inserts (a batch would merge them)
        for i, node in enumerate(NODES):
            second = [event(Op.UPDATE, i * 10 + 1, node, "更名"), event(Op.DELETE, i * 10 + 2, node)]
            store.receive(node, 2, f"{node}:{CITY}:2", encode_batch(second), 2, CITY)
            expected.extend([(i * 10 + 1, "u", node), (i * 10 + 2, "d", node)])
        store.close()

    config = city_node(tmp_path, city, x)
    run_once(config, "qy-in")
    then_update_and_delete()
    run_once(config, "qy-in")
    pg_exec(city, "INSERT INTO qy_jbxx VALUES (5001, '市属企业', '110100')")  # the city's own change
    expected.append((5001, "c", CITY))
    run_once(config, "qy-wal")

    captured = q(tmp_path / "seen.db", "SELECT qyid, op, origin FROM qy_seen ORDER BY n")
    assert sorted(captured) == sorted(expected)
    assert len({origin for _, _, origin in captured}) == 102
    origins = [r[0] for r in pg_rows(city, "SELECT roname FROM pg_replication_origin")]
    assert origins == ["tiersync:qy-in"]  # one for the applying pipeline, not one per node


def test_kill_9_of_the_applying_engine_captures_every_row_once_with_its_node(tmp_path, few_slots):
    """The apply engine killed at random points while 100 nodes' batches arrive: capture on the target
    sees each inserted row exactly once (a re-applied row would show as an update) and names its node."""
    city = few_slots.create_database("city_kill")
    pg_exec(city, DDL)
    x = sqlite_db(tmp_path / "x.db")
    store = connector_for(x).exchange_store()
    store.ensure()
    config = city_node(tmp_path, city, x, inbox_batch=7)
    chance = random.Random(6)
    expected, at_kill = [], []
    for round_ in range(4):
        for i, node in enumerate(NODES):  # each node's next batch: five new rows
            rows = [event(Op.CREATE, 100_000 * round_ + i * 10 + k, node) for k in range(5)]
            store.receive(node, round_ + 1, f"{node}:{CITY}:{round_ + 1}", encode_batch(rows), 5, CITY)
            expected += [(e.key[0], "c", node) for e in rows]
        engine = spawn_engine(config, "--pipeline", "qy-in", log=tmp_path / "engine.log")
        # killed once this round's rows are partly in (a random point, whatever the machine's speed)
        threshold = len(expected) - 5 * len(NODES) + chance.randint(1, 4 * len(NODES))
        deadline = time.monotonic() + 120
        while pg_rows(city, "SELECT count(*) FROM qy_jbxx")[0][0] < threshold and time.monotonic() < deadline:
            time.sleep(0.002)
        engine.kill()  # SIGKILL, mid-batch or between batches
        engine.wait()
        at_kill.append((pg_rows(city, "SELECT count(*) FROM qy_jbxx")[0][0], len(expected)))
    store.close()
    assert any(0 < applied < queued for applied, queued in at_kill), at_kill  # some kills came mid-way
    run_once(config, "qy-in")
    run_once(config, "qy-wal")
    captured = q(tmp_path / "seen.db", "SELECT qyid, op, origin FROM qy_seen")
    assert sorted(captured) == sorted(expected)
    assert pg_rows(city, "SELECT count(*) FROM qy_jbxx") == [(len(expected),)]


TABLE = TableInfo(TableId("public", "qy_jbxx"), (ColumnInfo("qyid", "integer", False), ColumnInfo("qymc", "text"),
                                                 ColumnInfo("xzqh", "text")), ("qyid",))


def _reader(url: str, slot: str, start=None) -> PostgresLogicalReader:
    return PostgresLogicalReader(url, slot, "origins_pub", [CapturedTable(TABLE, ("qyid",))], start, CITY)


def _attributed(url: str, slot: str) -> list[tuple]:
    reader = _reader(url, slot)
    try:
        out = []
        while True:
            batch = reader.read(1000)
            out += [(e.key[0], e.op.value, e.origin) for e in batch.events]
            if not batch.events:
                return out
    finally:
        reader.close()


def test_runs_of_several_origins_in_one_transaction_and_rolled_back_marks(few_slots):
    """Origin messages are transactional: each run of rows keeps its node, and a mark rolled back with a
    savepoint does not leak onto the rows after it."""
    url = few_slots.create_database("city_runs")
    pg_exec(url, DDL, "CREATE PUBLICATION origins_pub FOR TABLE qy_jbxx",
            "SELECT pg_create_logical_replication_slot('runs', 'pgoutput')")
    table = TABLE
    session = PostgresSession(url, "tiersync")
    try:
        session.begin()
        session.lock_pipeline("runs-in")
        for origin, key in (("county-a", 1), ("county-b", 2), (None, 3), ("county-a", 4)):
            session.set_origin(origin)
            session.upsert(table, ["qyid", "qymc"], ["qyid"], [(key, "x")])
        session.savepoint()
        session.set_origin("county-ghost")
        session.rollback_to_savepoint()
        session.release_savepoint()
        session.set_origin("county-a")  # the same as before the savepoint: marked again all the same
        session.upsert(table, ["qyid", "qymc"], ["qyid"], [(5, "x")])
        session.commit()
    finally:
        session.close()
    assert _attributed(url, "runs") == [(1, "c", "county-a"), (2, "c", "county-b"), (3, "c", CITY),
                                        (4, "c", "county-a"), (5, "c", "county-a")]


def test_transactions_marked_by_per_node_origins_still_decode_and_those_origins_are_dropped_later():
    """Upgrading: WAL written under an earlier version's origin ``tiersync:<pipeline>:<node>`` is attributed
    to that node, and the origin is dropped once every logical slot of the cluster has confirmed past its
    last transaction (origins are cluster-wide: a slot of another database that is behind keeps it)."""
    from tests.harness.postgres import PostgresServer

    server = PostgresServer({"wal_level": "logical", "max_replication_slots": "10"}).init().start()
    try:
        _upgrade(server)
    finally:
        server.destroy()


def _upgrade(server) -> None:
    url, other = server.create_database("city_upgrade"), server.create_database("elsewhere")
    pg_exec(other, "SELECT pg_create_logical_replication_slot('behind', 'pgoutput')")
    pg_exec(url, DDL, "CREATE PUBLICATION origins_pub FOR TABLE qy_jbxx",
            "SELECT pg_create_logical_replication_slot('upgrade', 'pgoutput')")
    with psycopg.connect(url, autocommit=True) as conn:  # what an earlier version's apply session did
        conn.execute("SELECT pg_replication_origin_create('tiersync:up-in:county-old')")
        conn.execute("SELECT pg_replication_origin_session_setup('tiersync:up-in:county-old')")
        conn.execute("INSERT INTO qy_jbxx VALUES (1, 'old', '110101')")
        conn.execute("SELECT pg_replication_origin_session_reset()")
    table = TABLE

    def apply_one(key: int) -> None:
        session = PostgresSession(url, "tiersync")
        try:
            session.begin()
            session.lock_pipeline("up-in")
            session.set_origin("county-new")
            session.upsert(table, ["qyid", "qymc"], ["qyid"], [(key, "new")])
            session.commit()
        finally:
            session.close()

    def origins() -> list[str]:
        return [r[0] for r in pg_rows(url, "SELECT roname FROM pg_replication_origin "
                                           "WHERE roname LIKE 'tiersync:up-in%' ORDER BY 1")]

    apply_one(2)
    assert origins() == ["tiersync:up-in", "tiersync:up-in:county-old"]  # the slot has not decoded it yet: kept
    reader = _reader(url, "upgrade")
    try:
        attributed, batch = [], reader.read(1000)
        while batch.events:
            attributed += [(e.key[0], e.origin) for e in batch.events]
            reader.acknowledge(batch.position)
            batch = reader.read(1000)  # tells the slot
        reader.read(1000)
    finally:
        reader.close()
    assert attributed == [(1, "county-old"), (2, "county-new")]
    confirmed = ("SELECT bool_and(r.confirmed_flush_lsn >= s.local_lsn) FROM pg_replication_slots r, "
                 "pg_replication_origin_status s WHERE s.external_id = 'tiersync:up-in:county-old' "
                 "AND r.slot_name = 'upgrade'")
    for _ in range(100):  # the walsender takes the confirmation in its own time
        if pg_rows(url, confirmed) == [(True,)]:
            break
        time.sleep(0.1)
    apply_one(3)  # a new session of the pipeline
    assert origins() == ["tiersync:up-in", "tiersync:up-in:county-old"]  # slot "behind" could still decode it
    pg_exec(other, "SELECT pg_drop_replication_slot('behind')")
    apply_one(4)
    assert origins() == ["tiersync:up-in"]
    assert _attributed(url, "upgrade") == [(3, "c", "county-new"), (4, "c", "county-new")]


def test_two_sessions_of_one_pipeline_share_its_origin_by_their_messages(few_slots):
    """A snapshot's session beside the stream's: PostgreSQL lets one session hold an origin; the other
    applies without it (no error), and the messages attribute both sessions' rows."""
    url = few_slots.create_database("city_twins")
    pg_exec(url, DDL, "CREATE PUBLICATION origins_pub FOR TABLE qy_jbxx",
            "SELECT pg_create_logical_replication_slot('twins', 'pgoutput')")
    stream, snapshot = PostgresSession(url, "tiersync"), PostgresSession(url, "tiersync")
    try:
        for session, origin, key in ((stream, "county-a", 1), (snapshot, "county-b", 2), (stream, "county-a", 3),
                                     (snapshot, "county-b", 4)):
            session.begin()
            session.lock_pipeline("twins-in")
            session.set_origin(origin)
            session.upsert(TABLE, ["qyid", "qymc"], ["qyid"], [(key, "x")])
            session.commit()
    finally:
        stream.close()
        snapshot.close()
    assert _attributed(url, "twins") == [(1, "c", "county-a"), (2, "c", "county-b"), (3, "c", "county-a"),
                                         (4, "c", "county-b")]
