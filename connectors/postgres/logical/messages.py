"""The pgoutput messages, as small frozen dataclasses (see :mod:`.pgoutput` for the decoder); those that come
once per transaction are named tuples, which cost a tenth as much to make.

Column values are ``str`` (text format), ``bytes`` (binary format, only with the ``binary``
option), ``None`` (SQL NULL) or :data:`UNCHANGED` (an unchanged TOASTed value the server did not
send: it is *not* NULL, the row still holds its old value).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple, Union

from .lsn import Lsn


class Unchanged(enum.Enum):
    """Type of :data:`UNCHANGED`."""

    UNCHANGED = "u"


UNCHANGED = Unchanged.UNCHANGED
"""An unchanged TOASTed column value: the server did not send it, the row keeps its old value."""

Value = Union[str, bytes, None, Unchanged]


class Column(NamedTuple):
    """One column of a :class:`Relation`; ``flags`` bit 1 marks a replica identity (key) column."""

    flags: int
    name: str
    type_oid: int
    typmod: int

    @property
    def is_key(self) -> bool:
        return bool(self.flags & 1)


class Begin(NamedTuple):
    """Start of a transaction; ``final_lsn`` is the LSN of its commit record."""

    final_lsn: Lsn
    commit_ts: datetime
    xid: int


class Commit(NamedTuple):
    """End of a transaction; confirm ``end_lsn`` once it is applied."""

    flags: int
    commit_lsn: Lsn
    end_lsn: Lsn
    commit_ts: datetime


@dataclass(frozen=True, slots=True)
class Origin:
    """The replication origin the current transaction was replayed from (sent after Begin)."""

    lsn: Lsn
    name: str


@dataclass(frozen=True, slots=True)
class Relation:
    """A table's shape, sent before its first change (and again after it changes).

    ``namespace`` is empty for ``pg_catalog``; ``replica_identity`` is one of ``d`` (default),
    ``n`` (nothing), ``f`` (full), ``i`` (index).
    """

    oid: int
    namespace: str
    name: str
    replica_identity: str
    columns: tuple[Column, ...]
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Type:
    """A non-built-in data type used by a following Relation."""

    oid: int
    namespace: str
    name: str
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Insert:
    """A new row."""

    oid: int
    new: tuple[Value, ...]
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Update:
    """A changed row. ``old_kind`` is ``"K"`` (old key columns only; others None), ``"O"`` (the whole
    old row, replica identity FULL) or None (key unchanged, no old values sent)."""

    oid: int
    old_kind: str | None
    old: tuple[Value, ...] | None
    new: tuple[Value, ...]
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    """A deleted row; ``old_kind`` is ``"K"`` (key columns only; others None) or ``"O"`` (whole row)."""

    oid: int
    old_kind: str
    old: tuple[Value, ...]
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Truncate:
    """TRUNCATE of one or more tables; ``options`` bit 1 is CASCADE, bit 2 RESTART IDENTITY."""

    options: int
    oids: tuple[int, ...]
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """A ``pg_logical_emit_message`` payload (sent only with the ``messages`` option)."""

    transactional: bool
    lsn: Lsn
    prefix: str
    content: bytes
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class StreamStart:
    """Start of a block of changes of the in-progress transaction ``xid`` (protocol 2)."""

    xid: int
    first: bool


@dataclass(frozen=True, slots=True)
class StreamStop:
    """End of the current stream block."""


@dataclass(frozen=True, slots=True)
class StreamCommit:
    """Commit of the streamed transaction ``xid``: apply its blocks, then confirm ``end_lsn``."""

    xid: int
    flags: int
    commit_lsn: Lsn
    end_lsn: Lsn
    commit_ts: datetime


@dataclass(frozen=True, slots=True)
class StreamAbort:
    """Abort of the streamed (sub)transaction ``subxid`` of ``xid`` (equal when the whole one aborted)."""

    xid: int
    subxid: int


PgOutputMessage = Union[Begin, Commit, Origin, Relation, Type, Insert, Update, Delete, Truncate, Message,
                        StreamStart, StreamStop, StreamCommit, StreamAbort]
