"""Decoder for the ``pgoutput`` logical replication messages (PostgreSQL "Logical Replication Message Formats").

Protocol version 1 messages, plus the version 2 streaming messages (Stream Start/Stop/Commit/Abort).
Inside a stream block (between Stream Start and Stream Stop) the data messages carry the
transaction id after their type byte; :class:`PgOutputDecoder` tracks that state, so feed it
every message of one replication connection, in order. It is on the hot path: precompiled
structs, no per-value function calls.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from struct import Struct, unpack_from
from struct import error as StructError

from .lsn import Lsn
from .messages import (
    UNCHANGED,
    Begin,
    Column,
    Commit,
    Delete,
    Insert,
    Message,
    Origin,
    PgOutputMessage,
    Relation,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    Type,
    Update,
    Value,
)

_PG_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)
_U16 = Struct("!H").unpack_from
_U32 = Struct("!I").unpack_from
_I32 = Struct("!i").unpack_from
_BEGIN = Struct("!QqI").unpack_from
_COMMIT = Struct("!BQQq").unpack_from
_ORIGIN = Struct("!Q").unpack_from
_RELATION = Struct("!I").unpack_from
_COLUMN = Struct("!Ii").unpack_from
_MESSAGE = Struct("!BQ").unpack_from
_TRUNCATE = Struct("!IB").unpack_from
_STREAM_START = Struct("!IB").unpack_from
_STREAM_COMMIT = Struct("!IBQQq").unpack_from
_STREAM_ABORT = Struct("!II").unpack_from


class PgOutputError(ValueError):
    """A pgoutput message that is malformed, truncated or of an unknown type."""


def _timestamp(micros: int) -> datetime:
    return _PG_EPOCH + timedelta(microseconds=micros)


def _string(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(b"\0", pos)
    return data[pos:end].decode(), end + 1


def decode_tuple(data: bytes, pos: int) -> tuple[tuple[Value, ...], int]:
    """Read a TupleData at ``pos``; returns the values and the position after them."""
    (count,) = _U16(data, pos)
    pos += 2
    values: list[Value] = []
    append = values.append
    for _ in range(count):
        kind = data[pos]
        if kind == 116:  # 't'
            (size,) = _I32(data, pos + 1)
            pos += 5
            append(data[pos:pos + size].decode())
            pos += size
        elif kind == 110:  # 'n'
            append(None)
            pos += 1
        elif kind == 117:  # 'u'
            append(UNCHANGED)
            pos += 1
        elif kind == 98:  # 'b'
            (size,) = _I32(data, pos + 1)
            pos += 5
            append(data[pos:pos + size])
            pos += size
        else:
            raise PgOutputError(f"unknown TupleData column kind {chr(kind)!r}")
    if pos > len(data):
        raise PgOutputError("TupleData runs past the end of the message")
    return tuple(values), pos


def _insert(data: bytes, pos: int, xid: int | None) -> Insert:
    (oid,) = _U32(data, pos)
    if data[pos + 4] != 78:  # 'N'
        raise PgOutputError("Insert without a new tuple")
    return Insert(oid, decode_tuple(data, pos + 5)[0], xid)


def _update(data: bytes, pos: int, xid: int | None) -> Update:
    (oid,) = _U32(data, pos)
    pos += 4
    old_kind = old = None
    if data[pos] in (75, 79):  # 'K', 'O'
        old_kind = chr(data[pos])
        old, pos = decode_tuple(data, pos + 1)
    if data[pos] != 78:
        raise PgOutputError("Update without a new tuple")
    return Update(oid, old_kind, old, decode_tuple(data, pos + 1)[0], xid)


def _delete(data: bytes, pos: int, xid: int | None) -> Delete:
    (oid,) = _U32(data, pos)
    kind = data[pos + 4]
    if kind not in (75, 79):
        raise PgOutputError("Delete without an old key or tuple")
    return Delete(oid, chr(kind), decode_tuple(data, pos + 5)[0], xid)


def _relation(data: bytes, pos: int, xid: int | None) -> Relation:
    (oid,) = _RELATION(data, pos)
    namespace, pos = _string(data, pos + 4)
    name, pos = _string(data, pos)
    identity = chr(data[pos])
    (count,) = _U16(data, pos + 1)
    pos += 3
    columns = []
    for _ in range(count):
        flags = data[pos]
        column, pos = _string(data, pos + 1)
        type_oid, typmod = _COLUMN(data, pos)
        pos += 8
        columns.append(Column(flags, column, type_oid, typmod))
    return Relation(oid, namespace, name, identity, tuple(columns), xid)


def _type(data: bytes, pos: int, xid: int | None) -> Type:
    (oid,) = _U32(data, pos)
    namespace, pos = _string(data, pos + 4)
    return Type(oid, namespace, _string(data, pos)[0], xid)


def _truncate(data: bytes, pos: int, xid: int | None) -> Truncate:
    count, options = _TRUNCATE(data, pos)
    return Truncate(options, unpack_from(f"!{count}I", data, pos + 5), xid)


def _message(data: bytes, pos: int, xid: int | None) -> Message:
    flags, lsn = _MESSAGE(data, pos)
    prefix, pos = _string(data, pos + 9)
    (size,) = _I32(data, pos)
    content = data[pos + 4:pos + 4 + size]
    if len(content) != size:
        raise PgOutputError("Message content runs past the end of the message")
    return Message(bool(flags & 1), Lsn(lsn), prefix, content, xid)


def _begin(data: bytes) -> Begin:
    final_lsn, ts, xid = _BEGIN(data, 1)
    return Begin(Lsn(final_lsn), _timestamp(ts), xid)


def _commit(data: bytes) -> Commit:
    flags, commit_lsn, end_lsn, ts = _COMMIT(data, 1)
    return Commit(flags, Lsn(commit_lsn), Lsn(end_lsn), _timestamp(ts))


def _origin(data: bytes) -> Origin:
    (lsn,) = _ORIGIN(data, 1)
    return Origin(Lsn(lsn), _string(data, 9)[0])


def _stream_start(data: bytes) -> StreamStart:
    xid, first = _STREAM_START(data, 1)
    return StreamStart(xid, first == 1)


def _stream_commit(data: bytes) -> StreamCommit:
    xid, flags, commit_lsn, end_lsn, ts = _STREAM_COMMIT(data, 1)
    return StreamCommit(xid, flags, Lsn(commit_lsn), Lsn(end_lsn), _timestamp(ts))


def _stream_abort(data: bytes) -> StreamAbort:
    return StreamAbort(*_STREAM_ABORT(data, 1))


# Messages that carry an Int32 xid after the type byte inside a stream block.
_DATA = {ord("I"): _insert, ord("U"): _update, ord("D"): _delete, ord("R"): _relation, ord("Y"): _type,
         ord("T"): _truncate, ord("M"): _message}
_CONTROL = {ord("B"): _begin, ord("C"): _commit, ord("O"): _origin, ord("S"): _stream_start,
            ord("E"): lambda data: StreamStop(), ord("c"): _stream_commit, ord("A"): _stream_abort}
_STREAM_START_BYTE = ord("S")
_STREAM_STOP_BYTE = ord("E")


class PgOutputDecoder:
    """Decodes the pgoutput messages of one replication connection, in order.

    Stateful only in knowing whether it is inside a stream block (protocol 2), where data
    messages carry the transaction id.
    """

    __slots__ = ("in_stream",)

    def __init__(self) -> None:
        self.in_stream = False

    def decode(self, data: bytes) -> PgOutputMessage:
        """Decode one message (the payload of one XLogData)."""
        try:
            kind = data[0]
            handler = _DATA.get(kind)
            if handler is not None:
                if self.in_stream:
                    return handler(data, 5, _U32(data, 1)[0])
                return handler(data, 1, None)
            control = _CONTROL.get(kind)
            if control is None:
                raise PgOutputError(f"unknown pgoutput message type {chr(kind)!r}")
            message = control(data)
        except PgOutputError:
            raise
        except (IndexError, StructError, ValueError) as exc:
            raise PgOutputError(f"malformed pgoutput message {bytes(data[:1])!r}: {exc}") from exc
        if kind == _STREAM_START_BYTE:
            self.in_stream = True
        elif kind == _STREAM_STOP_BYTE:
            self.in_stream = False
        return message
