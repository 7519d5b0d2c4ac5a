"""The pgoutput decoder on hand-built messages, LSN text, and the START_REPLICATION command."""

from __future__ import annotations

import struct
from datetime import datetime, timezone

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
    PgOutputError,
    Relation,
    ReplicationStream,
    ReplicationStreamError,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    Type,
    Update,
    decode_tuple,
)

TS = 757_382_400_123_456  # 2024-01-01 00:00:00.123456 UTC in microseconds since 2000-01-01
WHEN = datetime(2024, 1, 1, 0, 0, 0, 123456, tzinfo=timezone.utc)


def text(value: str) -> bytes:
    return value.encode() + b"\0"


def tuple_data(*values) -> bytes:
    out = struct.pack("!H", len(values))
    for value in values:
        if value is None:
            out += b"n"
        elif value is UNCHANGED:
            out += b"u"
        elif isinstance(value, bytes):
            out += b"b" + struct.pack("!i", len(value)) + value
        else:
            encoded = value.encode()
            out += b"t" + struct.pack("!i", len(encoded)) + encoded
    return out


def decode(data: bytes):
    return PgOutputDecoder().decode(data)


def test_lsn_parses_formats_and_orders():
    lsn = Lsn.parse("16/B374D848")
    assert lsn == 0x16_B374D848 and str(lsn) == "16/B374D848" and f"{lsn}" == "16/B374D848"
    assert repr(lsn) == "Lsn('16/B374D848')" and f"{lsn:x}" == "16b374d848"
    assert Lsn.parse("16/b374d848") == lsn and Lsn.parse(" 0/0 ") == Lsn(0) == 0
    assert str(Lsn((1 << 64) - 1)) == "FFFFFFFF/FFFFFFFF"
    assert Lsn.parse("0/FFFFFFFF") < Lsn.parse("1/0") < Lsn.parse("1/1")
    assert sorted([Lsn(3), Lsn(1), Lsn(2)]) == [1, 2, 3] and max(Lsn(5), 4) == 5
    assert isinstance(Lsn.parse("1/0"), Lsn) and {Lsn(7): "x"}[7] == "x"
    for bad in ("", "16", "16/", "/1", "x/1", "123456789/0", "1/2/3", "+1/2", "0x1/2"):
        with pytest.raises(ValueError, match="not an LSN"):
            Lsn.parse(bad)
    with pytest.raises(ValueError):
        Lsn(-1)
    with pytest.raises(ValueError):
        Lsn(1 << 64)


def test_begin_commit_origin():
    assert decode(b"B" + struct.pack("!QqI", 0x1_00000010, TS, 731)) == Begin(Lsn.parse("1/10"), WHEN, 731)
    commit = decode(b"C" + struct.pack("!BQQq", 0, 0x1_00000010, 0x1_00000040, TS))
    assert commit == Commit(0, Lsn.parse("1/10"), Lsn.parse("1/40"), WHEN)
    assert isinstance(commit.end_lsn, Lsn)
    assert decode(b"O" + struct.pack("!Q", 0xABCDEF) + text("county_110101")) == Origin(Lsn(0xABCDEF), "county_110101")


def test_relation_and_type():
    data = (b"R" + struct.pack("!I", 16385) + text("public") + text("企业") + b"f" + struct.pack("!H", 2)
            + b"\x01" + text("id") + struct.pack("!Ii", 23, -1)
            + b"\x00" + text("amount") + struct.pack("!Ii", 1700, 655366))
    relation = decode(data)
    assert relation == Relation(16385, "public", "企业", "f",
                                (Column(1, "id", 23, -1), Column(0, "amount", 1700, 655366)))
    assert [c.is_key for c in relation.columns] == [True, False] and relation.xid is None
    assert decode(b"Y" + struct.pack("!I", 90001) + text("") + text("mood")) == Type(90001, "", "mood")


def test_tuple_values_keep_null_unchanged_text_and_binary_apart():
    values = ("1", "", None, UNCHANGED, "北京", b"\x00\xff")
    data = b"xx" + tuple_data(*values) + b"rest"
    decoded, end = decode_tuple(data, 2)
    assert decoded == values and data[end:] == b"rest"
    assert decoded[3] is UNCHANGED and decoded[3] is not None and repr(UNCHANGED) == "<Unchanged.UNCHANGED: 'u'>"


def test_insert_update_delete():
    oid = struct.pack("!I", 16385)
    assert decode(b"I" + oid + b"N" + tuple_data("1", "a")) == Insert(16385, ("1", "a"))
    assert decode(b"U" + oid + b"N" + tuple_data("1", UNCHANGED)) == Update(16385, None, None, ("1", UNCHANGED))
    assert decode(b"U" + oid + b"K" + tuple_data("1", None) + b"N" + tuple_data("2", "a")) == \
        Update(16385, "K", ("1", None), ("2", "a"))
    assert decode(b"U" + oid + b"O" + tuple_data("1", "old") + b"N" + tuple_data("1", "new")) == \
        Update(16385, "O", ("1", "old"), ("1", "new"))
    assert decode(b"D" + oid + b"K" + tuple_data("1", None)) == Delete(16385, "K", ("1", None))
    assert decode(b"D" + oid + b"O" + tuple_data("1", "a")) == Delete(16385, "O", ("1", "a"))


def test_truncate_and_message():
    assert decode(b"T" + struct.pack("!IBII", 2, 3, 16385, 16390)) == Truncate(3, (16385, 16390))
    message = decode(b"M" + struct.pack("!BQ", 1, 0x2_00000000) + text("tiersync") + struct.pack("!i", 3) + b"a\0b")
    assert message == Message(True, Lsn.parse("2/0"), "tiersync", b"a\0b")
    assert decode(b"M\x00" + struct.pack("!Q", 5) + text("p") + struct.pack("!i", 0)).transactional is False


def test_stream_blocks_carry_the_xid_on_data_messages():
    decoder = PgOutputDecoder()
    xid = struct.pack("!I", 740)
    assert decoder.decode(b"S" + struct.pack("!IB", 740, 1)) == StreamStart(740, True)
    assert decoder.in_stream
    relation = decoder.decode(b"R" + xid + struct.pack("!I", 16385) + text("public") + text("t") + b"d"
                              + struct.pack("!H", 1) + b"\x01" + text("id") + struct.pack("!Ii", 23, -1))
    assert relation.xid == 740 and relation.name == "t"
    assert decoder.decode(b"I" + struct.pack("!I", 741) + struct.pack("!I", 16385) + b"N" + tuple_data("1")) == \
        Insert(16385, ("1",), 741)  # a subtransaction's change carries the subtransaction's xid
    assert decoder.decode(b"U" + xid + struct.pack("!I", 16385) + b"N" + tuple_data("2")) == \
        Update(16385, None, None, ("2",), 740)
    assert decoder.decode(b"D" + xid + struct.pack("!I", 16385) + b"K" + tuple_data("2")) == \
        Delete(16385, "K", ("2",), 740)
    assert decoder.decode(b"T" + xid + struct.pack("!IBI", 1, 0, 16385)) == Truncate(0, (16385,), 740)
    assert decoder.decode(b"E") == StreamStop() and not decoder.in_stream
    assert decoder.decode(b"S" + struct.pack("!IB", 740, 0)) == StreamStart(740, False)
    assert decoder.decode(b"E") == StreamStop()
    assert decoder.decode(b"A" + struct.pack("!II", 740, 741)) == StreamAbort(740, 741)
    assert decoder.decode(b"c" + struct.pack("!IBQQq", 740, 0, 0x100, 0x130, TS)) == \
        StreamCommit(740, 0, Lsn(0x100), Lsn(0x130), WHEN)
    # Outside a block, the same bytes are read without an xid.
    assert decoder.decode(b"I" + struct.pack("!I", 16385) + b"N" + tuple_data("1")) == Insert(16385, ("1",))


@pytest.mark.parametrize("data, error", [
    (b"", "malformed"),
    (b"Z123", "unknown pgoutput message type 'Z'"),
    (b"B" + struct.pack("!Q", 1), "malformed pgoutput message b'B'"),
    (b"I" + struct.pack("!I", 1) + b"X" + tuple_data("1"), "Insert without a new tuple"),
    (b"U" + struct.pack("!I", 1) + b"K" + tuple_data("1") + b"X", "Update without a new tuple"),
    (b"D" + struct.pack("!I", 1) + b"N" + tuple_data("1"), "Delete without an old key"),
    (b"I" + struct.pack("!I", 1) + b"N" + struct.pack("!H", 1) + b"x", "unknown TupleData column kind 'x'"),
    (b"I" + struct.pack("!I", 1) + b"N" + struct.pack("!H", 1) + b"t" + struct.pack("!i", 9) + b"ab", "past the end"),
    (b"I" + struct.pack("!I", 1) + b"N" + struct.pack("!H", 2) + b"n", "malformed"),
    (b"I" + struct.pack("!I", 1) + b"N" + struct.pack("!H", 1) + b"t" + struct.pack("!i", 1) + b"\xff", "malformed"),
    (b"O" + struct.pack("!Q", 1) + b"no terminator", "malformed"),
    (b"M\x01" + struct.pack("!Q", 1) + text("p") + struct.pack("!i", 5) + b"ab", "past the end"),
])
def test_malformed_messages_raise_pgoutput_errors(data, error):
    with pytest.raises(PgOutputError, match=error):
        decode(data)


def test_start_replication_command_quotes_its_options():
    stream = ReplicationStream("postgresql://u@h/db", "slot_1", ["pub", 'we"ird'], start_lsn=Lsn.parse("16/B374D848"),
                               proto_version=2, messages=True)
    assert stream.start_command() == (
        "START_REPLICATION SLOT slot_1 LOGICAL 16/B374D848 (proto_version '2', "
        "publication_names '\"pub\",\"we\"\"ird\"', streaming 'on', messages 'true')")
    assert ReplicationStream("postgresql://h/db", "s", ["p"]).start_command() == \
        "START_REPLICATION SLOT s LOGICAL 0/0 (proto_version '1', publication_names '\"p\"')"
    assert stream.confirmed_lsn == Lsn.parse("16/B374D848") and stream.server_wal_end == 0
    with pytest.raises(ReplicationStreamError, match="not open"):
        stream.send_feedback(Lsn.parse("17/0"))
    assert stream.confirmed_lsn == Lsn.parse("17/0") and " LOGICAL 17/0 " in stream.start_command()
    for bad in ({"slot": "Bad-Name"}, {"publications": []}, {"publications": "p"}, {"proto_version": 3}):
        with pytest.raises(ValueError):
            ReplicationStream(**({"url": "postgresql://h/db", "slot": "s", "publications": ["p"]} | bad))
