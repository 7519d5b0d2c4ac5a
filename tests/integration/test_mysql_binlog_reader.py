"""The binlog reader against a real MariaDB: exact values, whole transactions, resume, checks, schema changes,
origin markers, a stalled stream and a server restart."""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from connectors.mysql.binlog_position import BinlogPosition
from connectors.mysql.binlog_reader import MARKER_TABLE, MysqlBinlogReader
from engine.errors import TerminalError, TransientError
from engine.event import Op, TableId
from engine.schema import ColumnInfo, TableInfo
from engine.seams import CapturedTable


def execute(server, database, *statements, params=None):
    conn = server.connect(database)
    try:
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement, params)
    finally:
        conn.close()


def captured(server, database: str, table: str, key=("id",)) -> CapturedTable:
    conn = server.connect(database)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT column_name, column_type FROM information_schema.columns WHERE table_schema = %s "
                        "AND table_name = %s ORDER BY ordinal_position", (database, table))
            rows = cur.fetchall()
            cur.execute("SELECT check_clause FROM information_schema.check_constraints WHERE constraint_schema = %s "
                        "AND table_name = %s", (database, table))
            json_columns = {c.strip()[len("json_valid(`"):-2] for (c,) in cur.fetchall()}  # MariaDB's JSON
            columns = tuple(ColumnInfo(n, "json" if n in json_columns else t) for n, t in rows)
    finally:
        conn.close()
    return CapturedTable(TableInfo(TableId(database, table), columns, key), key)


def drain(reader, max_events=1000, until=None, timeout=20.0):
    """Read until a batch is empty and the reader is caught up (or ``until`` events arrived)."""
    batches = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = reader.read(max_events)
        if batch.events or batch.ends_transaction:
            batches.append(batch)
        count = sum(len(b.events) for b in batches)
        if until is not None and count >= until:
            break
        if until is None and not batch.events and not batch.ends_transaction and batch.caught_up:
            break
    return batches


def events_of(batches):
    return [e for b in batches for e in b.events]


@pytest.fixture
def county(maria_server, maria_databases):
    url = maria_databases[0]
    name = url.rsplit("/", 1)[1]
    execute(maria_server, name, "CREATE TABLE item (id int unsigned PRIMARY KEY, label varchar(40), "
                                "qty bigint unsigned, amount decimal(20,6))")
    return maria_server, url, name


def reader_for(url, tables, start=None, **kwargs):
    return MysqlBinlogReader(url, "p", tables, start, "county-1", **kwargs)


def test_exact_values(maria_server, maria_databases):
    url = maria_databases[0]
    db = url.rsplit("/", 1)[1]
    execute(maria_server, db, """CREATE TABLE v (id bigint unsigned PRIMARY KEY, d decimal(30,10), dt datetime(6),
        ts timestamp(6) NULL, doc json, txt varchar(40), b varbinary(8), e enum('甲','乙'), s set('x','y','z'),
        bits bit(10), y year, t time(3), f float, g double, flag tinyint(1), zd date, u int unsigned)""")
    table = captured(maria_server, db, "v")
    reader = reader_for(url, [table])
    assert drain(reader)[0].ends_transaction  # the first start hands out its position to be saved
    execute(maria_server, db, "SET time_zone = '+08:00'",
            "INSERT INTO v VALUES (18446744073709551615, -12345678901234567890.0123456789, "
            "'2026-11-21 23:59:59.999999', '2026-11-21 08:00:00.250000', "
            "'{\"金额\": 12.50, \"list\": [1, 0.1, null]}', '县级数据😀', x'00ff10',"
            " '乙', 'z,x', b'1000000001', 2026, '-838:59:59.125', 0.1, 0.1, 1, '0000-00-00', 4294967295)",
            "INSERT INTO v (id, s) VALUES (1, '')")
    [first, second] = events_of(drain(reader))
    assert first.after == {
        "id": 18446744073709551615, "d": Decimal("-12345678901234567890.0123456789"),
        "dt": datetime(2026, 11, 21, 23, 59, 59, 999999),
        "ts": datetime(2026, 11, 21, 0, 0, 0, 250000, tzinfo=timezone.utc),
        "doc": {"金额": 12.5, "list": [1, 0.1, None]},
        "txt": "县级数据😀", "b": b"\x00\xff\x10", "e": "乙", "s": "x,z", "bits": 513, "y": 2026,
        "t": "-838:59:59.125", "f": 0.1, "g": 0.1, "flag": 1, "zd": None, "u": 4294967295}
    assert first.key == (18446744073709551615,) and first.op is Op.CREATE
    assert second.after["s"] == "" and second.after["d"] is None
    reader.close()


def test_whole_transactions_in_commit_order_and_resume(county):
    server, url, db = county
    table = captured(server, db, "item")
    reader = reader_for(url, [table])
    [start] = drain(reader)
    execute(server, db, "BEGIN", "INSERT INTO item VALUES (1, 'a', 1, 1.5)", "INSERT INTO item VALUES (2, 'b', 2, 2.5)",
            "COMMIT", "UPDATE item SET id = 3, label = '三' WHERE id = 2", "DELETE FROM item WHERE id = 1")
    batches = drain(reader)
    events = events_of(batches)
    assert [(e.op, e.key) for e in events] == [(Op.CREATE, (1,)), (Op.CREATE, (2,)), (Op.UPDATE, (3,)),
                                              (Op.DELETE, (1,))]
    assert events[2].before["id"] == 2 and events[2].after == {"id": 3, "label": "三", "qty": 2,
                                                              "amount": Decimal("2.500000")}
    assert [e.seq for e in events] == [1, 2, 1, 1]
    assert events[0].txid == events[1].txid != events[2].txid
    reader.close()
    # resume from the first transaction's position: exactly the rest arrives
    after_first = BinlogPosition.deserialise(batches[-1].position)
    execute(server, db, "INSERT INTO item VALUES (5, 'e', 5, 5)")
    reader = reader_for(url, [table], batches[-1].position)
    assert [(e.op, e.key) for e in events_of(drain(reader))] == [(Op.CREATE, (5,))]
    reader.close()
    # by file and offset alone (a server without GTIDs, or an operator's hand-set checkpoint)
    by_file = BinlogPosition("", after_first.file, after_first.pos, 0).serialise()
    reader = reader_for(url, [table], by_file)
    assert [(e.op, e.key) for e in events_of(drain(reader))] == [(Op.CREATE, (5,))]
    reader.close()
    # from the very start position: everything, once
    reader = reader_for(url, [table], start.position)
    assert len(events_of(drain(reader))) == 5
    reader.close()


def test_large_transaction_in_parts_and_split_resume(county):
    server, url, db = county
    table = captured(server, db, "item")
    reader = reader_for(url, [table])
    [start] = drain(reader)
    values = ", ".join(f"({i}, 'x', {i}, {i})" for i in range(1, 2501))
    execute(server, db, f"INSERT INTO item VALUES {values}")
    batches = drain(reader, max_events=1000)
    assert [len(b.events) for b in batches] == [1000, 1000, 500]
    assert [b.more for b in batches] == [True, True, False] and batches[-1].ends_transaction
    assert batches[0].position == batches[1].position == start.position  # nothing committed until the end
    reader.close()
    # split: each part commits at a position inside the transaction; resuming there skips what was applied
    reader = reader_for(url, [table], start.position, split_transactions=True)
    first = reader.read(1000)
    assert not first.more and BinlogPosition.deserialise(first.position).applied == 1000
    reader.close()
    reader = reader_for(url, [table], first.position, split_transactions=True)
    rest = events_of(drain(reader, max_events=1000))
    assert [e.key[0] for e in rest] == list(range(1001, 2501))
    reader.close()


def test_start_up_checks_name_each_missing_setting(county):
    server, url, db = county
    table = captured(server, db, "item")
    execute(server, db, "SET GLOBAL binlog_row_image = 'MINIMAL'", "SET GLOBAL binlog_row_metadata = 'MINIMAL'")
    try:
        with pytest.raises(TerminalError) as failure:
            reader_for(url, [table])
        message = str(failure.value)
        assert "binlog_row_image is MINIMAL" in message and "binlog_row_metadata is MINIMAL" in message
    finally:
        execute(server, db, "SET GLOBAL binlog_row_image = 'FULL'", "SET GLOBAL binlog_row_metadata = 'FULL'")
    execute(server, db, "CREATE USER IF NOT EXISTS 'weak'@'127.0.0.1' IDENTIFIED BY 'pw'",
            f"GRANT SELECT ON `{db}`.* TO 'weak'@'127.0.0.1'")
    weak = url.replace("root@", "weak:pw@")
    with pytest.raises(TerminalError) as failure:
        reader_for(weak, [table])
    assert "lacks REPLICATION SLAVE" in str(failure.value) and "lacks REPLICATION CLIENT" in str(failure.value)


def test_schema_changes_never_misalign_columns(county):
    server, url, db = county
    table = captured(server, db, "item")
    reader = reader_for(url, [table])
    [start] = drain(reader)
    execute(server, db, "INSERT INTO item VALUES (1, 'a', 1, 1)", "ALTER TABLE item DROP COLUMN qty",
            "INSERT INTO item VALUES (2, 'b', 2)")
    batches = drain(reader)
    events = events_of(batches)
    assert events[0].after == {"id": 1, "label": "a", "qty": 1, "amount": Decimal("1.000000")}
    assert events[1].after == {"id": 2, "label": "b", "amount": Decimal("2.000000")}  # dropped: left out
    reader.close()
    # replayed after the drop, with the table's current shape: the dropped column's old values are left out
    reader = reader_for(url, [captured(server, db, "item")], start.position)
    assert [e.after for e in events_of(drain(reader))] == [{"id": 1, "label": "a", "amount": Decimal("1.000000")},
                                                           {"id": 2, "label": "b", "amount": Decimal("2.000000")}]
    # a column added while captured: the runner must re-plan (transient), then the new shape is accepted
    execute(server, db, "ALTER TABLE item ADD COLUMN note text AFTER id", "INSERT INTO item VALUES (3, 'n', 'c', 3)")
    with pytest.raises(TransientError, match="column.s. note added"):
        drain(reader)
    reader.close()
    reader = reader_for(url, [captured(server, db, "item")], batches[-1].position)
    assert [e.after for e in events_of(drain(reader))] == [{"id": 3, "note": "n", "label": "c",
                                                           "amount": Decimal("3.000000")}]
    reader.close()
    # replaying changes written before a rename: a rename cannot be told from drop + add, so tiersync stops
    execute(server, db, "ALTER TABLE item CHANGE label title varchar(40)")
    reader = reader_for(url, [captured(server, db, "item")], batches[-1].position)
    with pytest.raises(TerminalError, match="carry column.s. label that the table no longer has, and lack title"):
        drain(reader)
    reader.close()


def test_truncate_of_a_captured_table(county):
    server, url, db = county
    reader = reader_for(url, [captured(server, db, "item")])
    drain(reader)
    execute(server, db, "INSERT INTO item VALUES (1, 'a', 1, 1)", "TRUNCATE TABLE item",
            "CREATE TABLE other (a int)", "TRUNCATE other")
    assert [e.op for e in events_of(drain(reader))] == [Op.CREATE, Op.TRUNCATE]
    reader.close()


def test_origin_marker_names_the_transaction_origin_and_is_not_handed_out(county):
    server, url, db = county
    execute(server, db, f"CREATE TABLE {MARKER_TABLE} (id int PRIMARY KEY, origin varchar(200) NOT NULL, "
                        f"n bigint NOT NULL DEFAULT 0)")
    reader = reader_for(url, [captured(server, db, "item")])
    drain(reader)
    applied = (f"INSERT INTO {MARKER_TABLE} (id, origin, n) VALUES (7, %s, 1) "
               f"ON DUPLICATE KEY UPDATE origin = VALUES(origin), n = n + 1")
    conn = server.connect(db)
    with conn.cursor() as cur:
        for origin in ("city-110100", "city-110100"):
            cur.execute("BEGIN")
            cur.execute(applied, (origin,))
            cur.execute("INSERT INTO item VALUES (%s, 'applied', 1, 1)", (10 + len(origin) + cur.rowcount,))
            cur.execute("COMMIT")
        cur.execute("INSERT INTO item VALUES (1, 'local', 1, 1)")
    conn.close()
    batches = drain(reader)
    events = events_of(batches)
    assert [e.origin for e in events] == ["city-110100", "city-110100", "county-1"]
    assert all(e.table.name == "item" for e in events)
    # one target transaction carries one origin
    assert [{e.origin for e in b.events} for b in batches if b.events] == [{"city-110100"}, {"county-1"}]
    reader.close()


def test_a_stalled_stream_is_noticed_and_a_restart_resumes(county):
    server, url, db = county
    table = captured(server, db, "item")
    reader = reader_for(url, [table], watchdog_seconds=3)
    [start] = drain(reader)
    execute(server, db, "INSERT INTO item VALUES (1, 'a', 1, 1)")
    [batch] = drain(reader)
    os.kill(server._process.pid, signal.SIGSTOP)  # alive but silent: no events, no heartbeats
    try:
        began = time.monotonic()
        with pytest.raises(TransientError, match="reconnecting from the checkpoint"):
            while time.monotonic() - began < 30:
                reader.read(100)
    finally:
        os.kill(server._process.pid, signal.SIGCONT)
    reader.close()
    reader = reader_for(url, [table], batch.position)
    execute(server, db, "INSERT INTO item VALUES (2, 'b', 2, 2)")
    assert [e.key for e in events_of(drain(reader))] == [(2,)]
    server.restart()  # the server goes away under a running stream
    with pytest.raises(TransientError):
        for _ in range(100):
            reader.read(100)
    reader.close()
    execute(server, db, "INSERT INTO item VALUES (3, 'c', 3, 3)")
    reader = reader_for(url, [table], start.position)
    assert [e.key for e in events_of(drain(reader))] == [(1,), (2,), (3,)]
    reader.close()


def test_an_idle_reader_moves_its_checkpoint_past_other_tables(county, monkeypatch):
    from connectors.mysql import binlog_reader

    monkeypatch.setattr(binlog_reader, "IDLE_CHECKPOINT_SECONDS", 1.0)
    server, url, db = county
    reader = reader_for(url, [captured(server, db, "item")])
    [start] = drain(reader)
    execute(server, db, "CREATE TABLE other (a int PRIMARY KEY)", "INSERT INTO other VALUES (1), (2)")
    deadline = time.monotonic() + 20
    moved = None
    while time.monotonic() < deadline and moved is None:
        batch = reader.read(100)
        assert not batch.events
        if batch.ends_transaction:
            moved = batch
    assert moved is not None, "the idle reader never let its position be saved"
    before, after = BinlogPosition.deserialise(start.position), BinlogPosition.deserialise(moved.position)
    assert after.file_offset > before.file_offset and after.gtid != before.gtid
    reader.close()


def test_the_fast_row_decoder_matches_the_library(maria_server, maria_databases):
    from pymysqlreplication import BinLogStreamReader
    from pymysqlreplication.row_event import UpdateRowsEvent, WriteRowsEvent

    from connectors.mysql import binlog_rows

    url = maria_databases[0]
    db = url.rsplit("/", 1)[1]
    execute(maria_server, db, """CREATE TABLE f (id bigint unsigned PRIMARY KEY, d decimal(30,10), d2 decimal(5,5),
        d3 decimal(10,0), dt datetime(6), dt0 datetime, ts timestamp(6) NULL, ts3 timestamp(3) NULL, txt varchar(400),
        c char(3), b varbinary(8), tx text, t1 tinyint, t2 smallint unsigned, t3 mediumint, t3u mediumint unsigned,
        i int, f float, g double, y year, zd date, u int unsigned, sb bigint)""")
    start = BinlogPosition.deserialise(reader_for(url, []).position.serialise()).gtid
    execute(maria_server, db, """INSERT INTO f VALUES
        (18446744073709551615, -12345678901234567890.0123456789, -0.12345, -9999999999, '2026-11-21 23:59:59.999999',
         '0000-00-00 00:00:00', '2026-11-21 08:00:00.250000', '2038-01-19 03:14:07.999', repeat('中', 300), 'ab',
         x'00ff10', '县级😀', -128, 65535, -8388608, 16777215, -2147483648, 0.1, 0.1, 2026, '0000-00-00',
         4294967295, -9223372036854775808),
        (1, 0.5, 0.00001, 0, '1000-01-01 00:00:00.000001', '9999-12-31 23:59:59', NULL, NULL, NULL, NULL, NULL, NULL,
         NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
        (2, -0.0000000001, -0.5, 1, '2000-01-01', '2000-01-01', '1970-01-01 08:00:01', '1999-12-31 23:59:59.5',
         'x', 'y', x'01', 'z', 127, 0, 8388607, 0, 2147483647, -1.5e30, -2.5e300, 1901, '9999-12-31', 0,
         9223372036854775807)""", "UPDATE f SET d = -d, dt = NULL, txt = concat(txt, '改')")

    def decode():
        stream = BinLogStreamReader(connection_settings={"host": "127.0.0.1", "port": maria_server.port,
                                                         "user": "root", "password": ""},
                                    server_id=4242, blocking=True, is_mariadb=True, auto_position=start,
                                    only_events=[WriteRowsEvent, UpdateRowsEvent], enable_logging=False)
        rows = []
        while len(rows) < 6:
            rows += [{k: v for k, v in r.items() if "none_sources" not in k} for r in stream.fetchone().rows]
        stream.close()
        return rows

    binlog_rows.uninstall()
    try:
        library = decode()
        binlog_rows.install()
        assert decode() == library
        assert library[0]["values"]["d"] == Decimal("-12345678901234567890.0123456789")
    finally:
        binlog_rows.install()
