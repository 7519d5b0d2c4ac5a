"""A logical replication stream (PostgreSQL streaming replication protocol) over psycopg 3.

psycopg has no replication API, but since 3.3 a ``replication=database`` connection can run
``START_REPLICATION`` and is then left in COPY_BOTH mode, which this module drives through
the libpq wrapper (``conn.pgconn``): CopyData messages carry XLogData ('w') and primary
keepalives ('k') from the server, and standby status updates ('r') from us.
"""

from __future__ import annotations

import re
import select
import time
from collections.abc import Sequence
from struct import Struct
from typing import NamedTuple

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .lsn import Lsn

_XLOG = Struct("!QQq").unpack_from
_XLOG_END = Struct("!Q").unpack_from
_KEEPALIVE = Struct("!QqB").unpack_from
_STATUS = Struct("!cQQQqB").pack
_new_lsn = int.__new__  # values unpacked with "Q" need no range check
_new_tuple = tuple.__new__
_XLOG_BYTE = ord("w")
_KEEPALIVE_BYTE = ord("k")
_UNIX_TO_PG_EPOCH_US = 946_684_800_000_000
# A shutting-down walsender waits for the client to confirm everything it sent, asking again as soon
# as it gets an answer. Repeating an unchanged answer within this many seconds is skipped, so the
# ping-pong stops and the server gives up after wal_sender_timeout instead of waiting forever.
_REPEAT_REPLY_GAP = 0.2
_NAME = re.compile(r"[a-z0-9_]{1,63}")
_CONNECTION_DEFAULTS = {"connect_timeout": "10", "keepalives": "1", "keepalives_idle": "30",
                        "keepalives_interval": "10", "keepalives_count": "3"}


class ReplicationStreamError(RuntimeError):
    """The replication stream could not be started, or ended: server error, disconnect, timeout."""


class XLogData(NamedTuple):
    """One XLogData message: its WAL start and end positions and its payload (one pgoutput message)."""

    wal_start: Lsn
    wal_end: Lsn
    payload: bytes


def _quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class ReplicationStream:
    """A ``pgoutput`` logical replication stream from one slot.

    ``url`` is an ordinary ``postgresql://`` URL (the replication keyword is added).
    Call :meth:`open` (or use it as a context manager), then :meth:`read` XLogData messages,
    and report what is durably applied with :meth:`send_feedback`: that advances the slot's
    ``confirmed_flush_lsn``, which is where a later stream starts and what lets the server
    recycle WAL. Keepalives asking for a reply are answered with the last confirmed position.

    ``start_lsn`` 0/0 means "from the slot's confirmed position"; a reconnecting client passes
    its last confirmed LSN. Opening the same stream again after it ended resumes from
    :attr:`confirmed_lsn` (start a fresh decoder then: transactions not confirmed are sent again).
    ``proto_version`` 2 adds ``streaming 'on'``: large in-progress transactions arrive as
    Stream Start/Stop blocks ended by Stream Commit or Stream Abort.

    Call :meth:`read` at least every ``wal_sender_timeout / 2`` (30 s by default), or the server
    drops the connection. Not thread-safe.
    """

    def __init__(self, url: str, slot: str, publications: Sequence[str], *,
                 start_lsn: int = 0, proto_version: int = 1, messages: bool = False,
                 send_timeout: float = 30.0):
        if not _NAME.fullmatch(slot):
            raise ValueError(f"not a replication slot name: {slot!r} (lower-case letters, digits, _)")
        if isinstance(publications, str) or not publications:
            raise ValueError(f"a list of at least one publication name is needed, not {publications!r}")
        if proto_version not in (1, 2):
            raise ValueError(f"unsupported pgoutput protocol version {proto_version} (1 or 2)")
        self.slot = slot
        self._url = url
        self._options = {"proto_version": str(proto_version),
                         "publication_names": ",".join(_quote_ident(p) for p in publications)}
        if proto_version >= 2:
            self._options["streaming"] = "on"
        if messages:
            self._options["messages"] = "true"
        self._send_timeout = send_timeout
        self._conn: psycopg.Connection | None = None
        self._confirmed = Lsn(start_lsn)
        self._server_wal_end = Lsn(0)
        self.data_wal_end = 0  # the highest WAL end of the XLogData read with read_payload / read_buffered
        self._end_seen = False  # read_buffered met the end of the stream
        self._sent: tuple[Lsn, float] = (Lsn(0), 0.0)  # last reported position, and when

    @property
    def confirmed_lsn(self) -> Lsn:
        """The highest position reported with :meth:`send_feedback` (``start_lsn`` before any); where
        :meth:`open` starts."""
        return self._confirmed

    @property
    def server_wal_end(self) -> Lsn:
        """The WAL end of the last keepalive (0/0 before any): how far the server has decoded.

        When everything received has been applied and no transaction is open, confirming this
        position lets an idle slot advance past WAL that held no published changes.
        """
        return self._server_wal_end

    def start_command(self) -> str:
        """The ``START_REPLICATION`` command :meth:`open` sends."""
        options = ", ".join(f"{key} {_quote_literal(value)}" for key, value in self._options.items())
        return f"START_REPLICATION SLOT {self.slot} LOGICAL {self._confirmed} ({options})"

    def open(self) -> ReplicationStream:
        """Connect and start replicating; raises :class:`ReplicationStreamError` if the server refuses."""
        if self._conn is not None:
            raise ReplicationStreamError("the replication stream is already open")
        params = _CONNECTION_DEFAULTS | conninfo_to_dict(self._url) | {"replication": "database",
                                                                        "client_encoding": "UTF8"}
        conninfo = make_conninfo("", **params)
        self._end_seen = False
        try:
            self._conn = psycopg.connect(conninfo, autocommit=True)
            cursor = self._conn.execute(self.start_command())
        except psycopg.Error as exc:
            self.close()
            raise ReplicationStreamError(f"could not start replication from slot {self.slot}: {exc}") from exc
        if cursor.pgresult is None or cursor.pgresult.status != psycopg.pq.ExecStatus.COPY_BOTH:
            self.close()
            raise ReplicationStreamError("START_REPLICATION did not enter COPY_BOTH mode")
        return self

    def close(self) -> None:
        """Disconnect (the slot keeps its confirmed position); safe to call twice."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> ReplicationStream:
        return self if self._conn is not None else self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _pgconn(self) -> psycopg.pq.abc.PGconn:
        if self._conn is None:
            raise ReplicationStreamError("the replication stream is not open")
        return self._conn.pgconn

    def read(self, timeout: float) -> XLogData | None:
        """The next XLogData, or None if none arrived within ``timeout`` seconds (0 polls).

        Keepalives are handled here (recorded, and answered when the server asks).
        Raises :class:`ReplicationStreamError` when the server ends the stream or the connection breaks.
        """
        data = self._next_xlog(timeout)
        if data is None:
            return None
        start, end, _ = _XLOG(data, 1)
        return _new_tuple(XLogData, (_new_lsn(Lsn, start), _new_lsn(Lsn, end), bytes(data[25:])))

    def read_payload(self, timeout: float, until_keepalive: bool = False) -> bytes | None:
        """As :meth:`read`, but only the payload (the hot path); :attr:`data_wal_end` keeps the highest
        WAL end the XLogData messages carried. With ``until_keepalive``, a keepalive also ends the wait
        (returning None): the server sends one when it has nothing more to send for now."""
        data = self._next_xlog(timeout, until_keepalive)
        if data is None:
            return None
        (end,) = _XLOG_END(data, 9)
        if end > self.data_wal_end:
            self.data_wal_end = end
        return bytes(data[25:])

    def read_buffered(self, limit: int) -> list[bytes]:
        """Up to ``limit`` XLogData payloads that have already arrived, in order, without waiting ([] when no
        whole message is there yet); as :meth:`read_payload` otherwise. For draining a backlog in one go."""
        pgconn = self._pgconn()
        payloads: list[bytes] = []
        refilled = False
        while len(payloads) < limit:
            try:
                nbytes, data = pgconn.get_copy_data(1)
                if nbytes == 0 and not refilled:  # take in what the socket holds, once, without blocking
                    refilled = True
                    pgconn.consume_input()
                    continue
            except psycopg.Error as exc:
                raise self._broken(exc) from exc
            if nbytes <= 0:
                if nbytes < 0:
                    self._end_seen = True  # reported by the next read, after these payloads
                break
            if data[0] == _XLOG_BYTE:
                (end,) = _XLOG_END(data, 9)
                if end > self.data_wal_end:
                    self.data_wal_end = end
                payloads.append(bytes(data[25:]))
            else:
                self._keepalive(data)
        return payloads

    def _keepalive(self, data) -> None:
        """Record a primary keepalive, and answer it when the server asks."""
        if data[0] != _KEEPALIVE_BYTE:
            raise ReplicationStreamError(f"unexpected replication message type {chr(data[0])!r}")
        wal_end, _, reply_requested = _KEEPALIVE(data, 1)
        self._server_wal_end = Lsn(wal_end)
        if reply_requested and (self._sent[0] != self._confirmed
                                or time.monotonic() - self._sent[1] > _REPEAT_REPLY_GAP):
            self._send_status(reply_now=False)

    def _next_xlog(self, timeout: float, until_keepalive: bool = False):
        """The next XLogData CopyData message as received (None: none within ``timeout``, or a keepalive came
        when ``until_keepalive``); keepalives handled."""
        pgconn = self._pgconn()
        if self._end_seen:
            raise self._ended()
        deadline = time.monotonic() + timeout
        while True:
            try:
                nbytes, data = pgconn.get_copy_data(1)
            except psycopg.Error as exc:
                raise self._broken(exc) from exc
            if nbytes > 0:
                if data[0] == _XLOG_BYTE:
                    return data
                self._keepalive(data)
                if until_keepalive:
                    return None
            elif nbytes == 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._wait(remaining, write=False)
            else:
                raise self._ended()

    def send_feedback(self, flush_lsn: int, reply_now: bool = False) -> None:
        """Report everything up to ``flush_lsn`` as written, flushed and applied.

        Pass a Commit's (or StreamCommit's) ``end_lsn`` once that transaction is durably applied.
        The reported position never moves backwards: a lower LSN re-sends the current one.
        If the stream is not open this raises, but the position is kept for the next :meth:`open`.
        """
        if flush_lsn > self._confirmed:
            self._confirmed = Lsn(flush_lsn)
        self._send_status(reply_now)

    def _send_status(self, reply_now: bool) -> None:
        pgconn = self._pgconn()
        lsn = self._confirmed
        now = time.time_ns() // 1000 - _UNIX_TO_PG_EPOCH_US
        message = _STATUS(b"r", lsn, lsn, lsn, now, 1 if reply_now else 0)
        deadline = time.monotonic() + self._send_timeout
        try:
            while not pgconn.put_copy_data(message):
                self._wait_to_send(deadline)
            while pgconn.flush():
                self._wait_to_send(deadline)
        except psycopg.Error as exc:
            raise self._broken(exc) from exc
        self._sent = (lsn, time.monotonic())

    def _wait_to_send(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ReplicationStreamError(f"could not send a status update within {self._send_timeout} s")
        self._wait(remaining, write=True)

    def _wait(self, timeout: float, write: bool) -> None:
        """Wait for the socket (readable, or writable too), then take in what arrived."""
        pgconn = self._pgconn()
        try:
            sock = pgconn.socket
            readable, _, _ = select.select([sock], [sock] if write else [], [], timeout)
            if readable:
                pgconn.consume_input()
        except (psycopg.Error, OSError) as exc:
            raise self._broken(exc) from exc

    def _broken(self, exc: BaseException) -> ReplicationStreamError:
        self.close()
        detail = " ".join(str(exc).split())  # libpq's messages span lines
        return ReplicationStreamError(f"replication connection for slot {self.slot} lost: {detail}")

    def _ended(self) -> ReplicationStreamError:
        """The server ended COPY mode: collect its error, if it sent one."""
        pgconn = self._pgconn()
        detail = "the server ended the replication stream"
        deadline = time.monotonic() + 10
        while pgconn.is_busy() and time.monotonic() < deadline:
            self._wait(deadline - time.monotonic(), write=False)
        result = pgconn.get_result() if not pgconn.is_busy() else None
        if result is not None and result.status == psycopg.pq.ExecStatus.FATAL_ERROR:
            detail = (result.error_message or b"").decode("utf-8", "replace").strip()
        self.close()
        return ReplicationStreamError(f"replication from slot {self.slot} stopped: {detail}")
