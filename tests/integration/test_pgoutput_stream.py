"""pgoutput over a real replication connection: exact decoded changes, feedback, resume, streaming, origins."""

from __future__ import annotations

import itertools
import threading
import time
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from connectors.postgres.logical import (
    UNCHANGED,
    Begin,
    Column,
    Commit,
    Delete,
    Insert,
    Lsn,
    Message,
    Origin,
    PgOutputDecoder,
    Relation,
    ReplicationStream,
    ReplicationStreamError,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    Update,
    check_wal_level,
    create_publication,
    create_slot,
    drop_publication,
    drop_slot,
    slot_status,
)

pytestmark = pytest.mark.postgres

SETTINGS = {"wal_level": "logical", "max_replication_slots": "10", "max_wal_senders": "10",
            "logical_decoding_work_mem": "64kB"}
ITEM_DDL = """
CREATE TABLE public.item (
    id integer PRIMARY KEY,
    name text NOT NULL,
    price numeric(10,2),
    active boolean,
    born date,
    seen timestamp,
    attrs jsonb,
    tags integer[],
    raw bytea,
    body text
)"""
ITEM_COLUMNS = (Column(1, "id", 23, -1), Column(0, "name", 25, -1), Column(0, "price", 1700, (10 << 16 | 2) + 4),
                Column(0, "active", 16, -1), Column(0, "born", 1082, -1), Column(0, "seen", 1114, -1),
                Column(0, "attrs", 3802, -1), Column(0, "tags", 1007, -1), Column(0, "raw", 17, -1),
                Column(0, "body", 25, -1))
BIG = "SELECT string_agg(md5(i::text), '') FROM generate_series(1, 3000) i"  # ~96 kB, stored out of line

_names = itertools.count()


@pytest.fixture(scope="module")
def server():
    from tests.harness.postgres import PostgresServer

    server = PostgresServer(settings=SETTINGS).init().start()
    yield server
    server.destroy()


class Source:
    """One database with a publication and a slot, and the streams a test opened on it."""

    def __init__(self, server):
        n = next(_names)
        self.url = server.create_database(f"logical_{n}")
        self.slot, self.publication = f"slot_{n}", f"pub_{n}"
        self.admin = psycopg.connect(self.url, autocommit=True)
        self.streams: list[ReplicationStream] = []

    def setup(self, *ddl: str) -> Lsn:
        """Run the DDL, publish public.item, create the slot; returns the slot's starting LSN."""
        for statement in ddl:
            self.admin.execute(statement)
        create_publication(self.admin, self.publication, ["public.item"])
        return create_slot(self.admin, self.slot)

    def run(self, *statements: str) -> None:
        """Each statement string in its own session (one transaction unless it says otherwise)."""
        for statement in statements:
            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute(statement)

    def stream(self, **options) -> ReplicationStream:
        stream = ReplicationStream(self.url, self.slot, [self.publication], **options).open()
        self.streams.append(stream)
        return stream

    def status(self):
        return slot_status(self.admin, self.slot)

    def wait_for(self, predicate, what: str, timeout: float = 15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            if predicate(status):
                return status
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}: {self.status()}")

    def close(self) -> None:
        for stream in self.streams:
            stream.close()
        self.admin.close()


@pytest.fixture
def source(server):
    source = Source(server)
    yield source
    source.close()


def collect(stream: ReplicationStream, count: int, timeout: float = 30.0) -> list:
    """(XLogData, message) pairs until ``count`` transactions ended (commit or whole abort)."""
    decoder, received, ended = PgOutputDecoder(), [], 0
    deadline = time.monotonic() + timeout
    while ended < count:
        assert time.monotonic() < deadline, f"only {ended} of {count} transactions arrived: {received[-5:]}"
        data = stream.read(0.5)
        if data is None:
            continue
        message = decoder.decode(data.payload)
        received.append((data, message))
        if isinstance(message, (Commit, StreamCommit)) or (
                isinstance(message, StreamAbort) and message.xid == message.subxid):
            ended += 1
    return received


def commits(received: list) -> list[Commit]:
    return [message for _, message in received if isinstance(message, Commit)]


def transactions(received: list) -> list[list]:
    """Split Begin … Commit runs; checks the LSNs inside each and their order across them."""
    result, current, last_commit = [], None, Lsn(0)
    for data, message in received:
        if isinstance(message, Begin):
            assert current is None
            current, begin = [], message
        elif isinstance(message, Commit):
            assert message.commit_lsn == begin.final_lsn and message.commit_ts == begin.commit_ts
            assert last_commit < message.commit_lsn < message.end_lsn == data.wal_start
            last_commit = message.commit_lsn
            result.append(current)
            current = None
        else:
            current.append(message)
    assert current is None
    return result


def test_decodes_inserts_updates_deletes_truncate_exactly(source):
    source.setup(ITEM_DDL)
    oid = source.admin.execute("SELECT 'public.item'::regclass::oid").fetchone()[0]
    big = source.admin.execute(BIG).fetchone()[0]
    source.run(
        "BEGIN;"
        "INSERT INTO item VALUES (1, '控件 widget', 12.5, true, '2024-02-29', '2024-01-02 03:04:05.123456',"
        f"  '{{\"b\": \"x\", \"a\": [1, 2]}}', '{{1,2,3}}', '\\x00ff10', ({BIG}));"
        "INSERT INTO item (id, name, active, body) VALUES (2, 'gadget', false, 'short');"
        "COMMIT",
        "UPDATE item SET name = 'renamed' WHERE id = 1",  # body is TOASTed and untouched
        "UPDATE item SET id = 10 WHERE id = 2",
        "DELETE FROM item WHERE id = 10",
        "ALTER TABLE item REPLICA IDENTITY FULL",  # no rows change: no transaction is sent
        "UPDATE item SET price = 1 WHERE id = 1",
        "DELETE FROM item WHERE id = 1",
        "TRUNCATE item RESTART IDENTITY",
    )
    row1 = ("1", "控件 widget", "12.50", "t", "2024-02-29", "2024-01-02 03:04:05.123456",
            '{"a": [1, 2], "b": "x"}', "{1,2,3}", "\\x00ff10", big)
    renamed = ("1", "renamed") + row1[2:]
    repriced = renamed[:2] + ("1.00",) + renamed[3:]
    row2 = ("2", "gadget", None, "f", None, None, None, None, None, "short")
    key_only = (None,) * 9
    relation = Relation(oid, "public", "item", "d", ITEM_COLUMNS)
    full = Relation(oid, "public", "item", "f", tuple(c._replace(flags=1) for c in ITEM_COLUMNS))

    with source.stream() as stream:
        received = collect(stream, 7)
    assert all(abs(c.commit_ts - datetime.now(timezone.utc)) < timedelta(minutes=5) for c in commits(received))
    assert transactions(received) == [
        [relation, Insert(oid, row1), Insert(oid, row2)],
        [Update(oid, None, None, renamed[:-1] + (UNCHANGED,))],
        [Update(oid, "K", ("2",) + key_only, ("10",) + row2[1:])],
        [Delete(oid, "K", ("10",) + key_only)],
        [full, Update(oid, "O", renamed, repriced[:-1] + (UNCHANGED,))],
        [Delete(oid, "O", repriced)],
        [full, Truncate(2, (oid,))],  # TRUNCATE gives the table a new file: its Relation is sent again
    ]


def test_feedback_advances_the_slot_and_a_reconnect_resumes_after_it(source):
    created = source.setup("CREATE TABLE item (id integer PRIMARY KEY)", "CREATE TABLE other (id integer)")
    source.run("INSERT INTO item VALUES (1)", "INSERT INTO item VALUES (2)")

    stream = source.stream()
    received = collect(stream, 2)
    assert [t[-1].new for t in transactions(received)] == [("1",), ("2",)]
    first, second = commits(received)
    status = source.status()
    assert status.active and status.active_pid and status.confirmed_flush_lsn == created
    assert status.retained_wal_bytes > 0 and status.wal_status == "reserved"

    stream.send_feedback(first.end_lsn)
    source.wait_for(lambda s: s.confirmed_flush_lsn == first.end_lsn, "the first commit to be confirmed")
    stream.send_feedback(created)  # lower: the reported position does not move back
    assert stream.confirmed_lsn == first.end_lsn
    stream.close()
    source.wait_for(lambda s: not s.active, "the slot to be released")

    source.run("INSERT INTO item VALUES (3)")
    stream = source.stream(start_lsn=first.end_lsn)
    received = collect(stream, 2)
    assert [t[-1].new for t in transactions(received)] == [("2",), ("3",)]  # 2 was never confirmed
    assert stream.read(1.0) is None
    third = commits(received)[-1]
    assert third.commit_lsn > second.end_lsn
    stream.send_feedback(third.end_lsn)
    source.wait_for(lambda s: s.confirmed_flush_lsn == third.end_lsn, "the third commit to be confirmed")

    # A write to an unpublished table sends no transaction, only a keepalive with the new WAL end:
    # confirming that lets an idle slot move on.
    source.run("INSERT INTO other VALUES (1)")
    deadline = time.monotonic() + 15
    while stream.server_wal_end <= third.end_lsn:
        assert time.monotonic() < deadline, "no keepalive reported the WAL end"
        assert stream.read(0.2) is None
    idle = stream.server_wal_end
    stream.send_feedback(idle)
    source.wait_for(lambda s: s.confirmed_flush_lsn == idle, "the idle position to be confirmed")
    stream.close()
    source.wait_for(lambda s: not s.active, "the slot to be released")

    stream = source.stream()  # 0/0: from the slot's confirmed position, so nothing is sent again
    assert stream.read(1.0) is None
    stream.close()
    source.wait_for(lambda s: not s.active, "the slot to be released")
    assert drop_slot(source.admin, source.slot) and not drop_slot(source.admin, source.slot)
    assert source.status() is None
    drop_publication(source.admin, source.publication)
    drop_publication(source.admin, source.publication)


def test_protocol_2_streams_large_transactions_in_blocks(source):
    source.setup("CREATE TABLE item (id integer PRIMARY KEY, filler text)")
    rows = "INSERT INTO item SELECT i, repeat('x', 100) FROM generate_series({}, {}) i;"
    source.run(  # each is far over logical_decoding_work_mem (64kB), so it is streamed before it ends
        "BEGIN;" + rows.format(1, 2000) + "COMMIT",
        "BEGIN;" + rows.format(2001, 4000) + "ROLLBACK",
        "BEGIN;" + rows.format(4001, 5000) + "SAVEPOINT s;" + rows.format(5001, 6000) + "ROLLBACK TO s; COMMIT",
    )
    messages = [message for _, message in collect(source.stream(proto_version=2), 3)]

    pending: dict[int, list[tuple[int, str]]] = {}  # top-level xid -> (xid, id) of streamed inserts
    committed, blocks, subxids, aborted_subxids, block = [], [], [], [], None
    for message in messages:
        assert not isinstance(message, (Begin, Commit))
        if isinstance(message, StreamStart):
            assert block is None and message.first == (message.xid not in pending)
            block = message.xid
            blocks.append(block)
            pending.setdefault(block, [])
        elif isinstance(message, StreamStop):
            block = None
        elif isinstance(message, (Relation, Insert)):
            assert block is not None and message.xid is not None
            if isinstance(message, Insert):
                pending[block].append((message.xid, message.new[0]))
                if message.xid != block:
                    subxids.append(message.xid)
        elif isinstance(message, StreamAbort):
            assert block is None
            if message.subxid == message.xid:
                assert len(pending.pop(message.xid)) > 0
            else:
                pending[message.xid] = [(x, i) for x, i in pending[message.xid] if x != message.subxid]
                aborted_subxids.append(message.subxid)
        else:
            assert isinstance(message, StreamCommit) and block is None
            assert message.commit_lsn < message.end_lsn
            committed += [int(i) for _, i in pending.pop(message.xid)]
    xids = list(dict.fromkeys(blocks))
    assert len(xids) == 3 and blocks.count(xids[0]) >= 2 and not pending
    assert aborted_subxids == list(dict.fromkeys(subxids)) and xids[2] not in aborted_subxids
    assert committed == list(range(1, 2001)) + list(range(4001, 5001))


def test_replication_origins_arrive_as_origin_messages(source):
    source.setup("CREATE TABLE item (id integer PRIMARY KEY)")
    oid = source.admin.execute("SELECT 'public.item'::regclass::oid").fetchone()[0]
    source.admin.execute("SELECT pg_replication_origin_create('county_110101')")
    with psycopg.connect(source.url) as conn:
        conn.execute("SELECT pg_replication_origin_session_setup('county_110101')")
        conn.execute("SELECT pg_replication_origin_xact_setup('1/ABCDEF', now())")
        conn.execute("INSERT INTO item VALUES (1)")
        conn.commit()
        conn.execute("SELECT pg_replication_origin_xact_setup('1/ABCE00', '2024-01-02 03:04:05+00')")
        conn.execute("INSERT INTO item VALUES (2)")
        conn.commit()
        conn.execute("SELECT pg_replication_origin_session_reset()")
        conn.execute("INSERT INTO item VALUES (3)")
        conn.commit()

    received = collect(source.stream(), 3)
    assert transactions(received) == [
        [Origin(Lsn.parse("1/ABCDEF"), "county_110101"),
         Relation(oid, "public", "item", "d", (Column(1, "id", 23, -1),)), Insert(oid, ("1",))],
        [Origin(Lsn.parse("1/ABCE00"), "county_110101"), Insert(oid, ("2",))],
        [Insert(oid, ("3",))],
    ]
    # A replayed transaction's commit timestamp is the one given for the origin (the remote commit's).
    assert commits(received)[1].commit_ts == datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def test_logical_messages_with_the_messages_option(source):
    source.setup("CREATE TABLE item (id integer PRIMARY KEY)")
    source.run("SELECT pg_logical_emit_message(false, 'tiersync', 'outside')",
               "BEGIN; INSERT INTO item VALUES (1);"
               "SELECT pg_logical_emit_message(true, 'tiersync', '\\x00ff'::bytea); COMMIT")
    received = collect(source.stream(messages=True), 1)
    outside = received[0][1]
    assert outside == Message(False, outside.lsn, "tiersync", b"outside") and outside.lsn > 0
    (transaction,) = transactions(received[1:])
    inside = transaction[-1]
    assert inside == Message(True, inside.lsn, "tiersync", b"\x00\xff") and inside.lsn > outside.lsn


def test_read_times_out_and_a_lost_connection_raises_then_reopens_after_the_confirmed_position(source):
    source.setup("CREATE TABLE item (id integer PRIMARY KEY)")
    stream = source.stream()
    started = time.monotonic()
    assert stream.read(0.3) is None
    assert 0.25 <= time.monotonic() - started < 2
    source.run("INSERT INTO item VALUES (1)")
    stream.send_feedback(commits(collect(stream, 1))[0].end_lsn)
    source.run("INSERT INTO item VALUES (2)")
    assert transactions(collect(stream, 1))[0][-1].new == ("2",)  # received, never confirmed

    pid = source.wait_for(lambda s: s.active_pid, "the walsender").active_pid
    source.admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    started = time.monotonic()
    with pytest.raises(ReplicationStreamError, match=f"slot {source.slot}.*administrator command"):
        while time.monotonic() - started < 10:
            stream.read(1.0)
    with pytest.raises(ReplicationStreamError, match="not open"):
        stream.read(0)

    source.wait_for(lambda s: not s.active, "the slot to be released")
    source.run("INSERT INTO item VALUES (3)")
    stream.open()
    assert [t[-1].new for t in transactions(collect(stream, 2))] == [("2",), ("3",)]


def test_a_server_restart_ends_the_stream_once_the_idle_position_is_confirmed(server, source):
    # A stopping walsender waits until the client confirms everything it sent: a client that
    # confirms the keepalive position when idle lets a fast shutdown finish at once.
    source.setup("CREATE TABLE item (id integer PRIMARY KEY)")
    source.run("INSERT INTO item VALUES (1)")
    stream = source.stream()
    stream.send_feedback(commits(collect(stream, 1))[0].end_lsn)
    stopping = threading.Thread(target=server.stop)
    started = time.monotonic()
    stopping.start()
    try:
        with pytest.raises(ReplicationStreamError, match=f"replication from slot {source.slot} stopped"):
            while time.monotonic() - started < 15:
                if stream.read(0.5) is None and stream.server_wal_end:
                    stream.send_feedback(stream.server_wal_end)
    finally:
        stopping.join()
        server.start()
    assert time.monotonic() - started < 15


def test_server_errors_are_raised_clearly(source):
    source.setup("CREATE TABLE item (id integer PRIMARY KEY)")
    with pytest.raises(ReplicationStreamError, match='slot "no_such_slot" does not exist'):
        ReplicationStream(source.url, "no_such_slot", [source.publication]).open()
    stream = ReplicationStream(source.url, source.slot, ["no_such_publication"]).open()
    source.streams.append(stream)
    source.run("INSERT INTO item VALUES (1)")
    started = time.monotonic()
    with pytest.raises(ReplicationStreamError, match='publication "no_such_publication" does not exist'):
        while time.monotonic() - started < 10:
            stream.read(1.0)


def test_wal_level_check(server, pg_server):
    with psycopg.connect(server.url(), autocommit=True) as conn:
        check_wal_level(conn)
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        with pytest.raises(ReplicationStreamError, match="wal_level is 'replica'"):
            check_wal_level(conn)
