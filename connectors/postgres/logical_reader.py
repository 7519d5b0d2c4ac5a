"""Capture from PostgreSQL's write-ahead log: a pgoutput logical replication stream turned into change events.

Batches hold whole source transactions, in commit order. A transaction larger
than a batch is handed over in chunks flagged ``more``: the runner applies
them inside one open target transaction and commits when the last chunk
arrives, so a huge transaction stays atomic without being held in memory
(unless the pipeline allows splitting it, when each chunk commits with a
position inside the transaction). The slot is confirmed only for
transactions the target has committed; when idle, the keepalive position is
confirmed so the slot does not hold back WAL.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from struct import Struct
from urllib.parse import quote

from engine.encoded import EncodedRow, RowEncoding
from engine.errors import TerminalError, TransientError
from engine.event import CREATE, UPDATE, ChangeEvent, Op, TableId
from engine.seams import CapturedTable, ReadBatch, Reader

from .connection import connect
from .copytext import COPY_TEXT, NOT_PORTABLE_TYPES, line_decoder, tuple_line
from .logical import (
    UNCHANGED,
    Begin,
    Commit,
    Delete,
    Insert,
    Message,
    Origin,
    PgOutputDecoder,
    PgOutputError,
    Relation,
    ReplicationStream,
    ReplicationStreamError,
    Truncate,
    Update,
    decode_tuple,
)
from .origins import MESSAGES_SINCE, node_of_message, node_of_origin
from .pgtext import WALSENDER_OPTIONS, TextDecoders
from .position import PostgresLsnPosition

log = logging.getLogger(__name__)
_OID = Struct("!I").unpack_from

POLL_SECONDS = 0.5
QUIET_SECONDS = 0.05  # a read that received nothing for this long asks the server for a keepalive
CATCH_UP_WAIT = 5.0  # longest one read waits for WAL older than the reader (then reports it is not caught up)


@dataclass
class _RelationPlan:
    table: TableId
    names: tuple[str, ...]
    decoders: tuple
    key: tuple[str, ...]
    key_positions: tuple[int, ...]
    encoding: RowEncoding | None = None  # complete new images travel as COPY text lines (see .copytext)
    key_readers: tuple = ()  # (position, raw bytes → key value) per key column, for encoded images


@dataclass
class _Txn:
    commit_lsn: int
    commit_ts: object
    xid: int
    origin: str = ""  # the node of the rows that follow ("" the captured node)
    seq: int = 0
    skip_all: bool = False
    skip_first: int = 0
    started: bool = False  # some of its changes were already handed out (in chunks flagged `more`)
    events: list = field(default_factory=list)
    position: PostgresLsnPosition | None = None


def stream_url(url: str) -> str:
    """The source URL with the walsender settings that make its text output unambiguous."""
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options={quote(WALSENDER_OPTIONS)}"


class PostgresLogicalReader(Reader):
    def __init__(self, url: str, slot: str, publication: str, tables: list[CapturedTable], start: str | None,
                 node_id: str, split_transactions: bool = False):
        self.node_id = node_id
        self.split = split_transactions
        self.tables = {(t.info.id.schema, t.info.id.name): t for t in tables}
        self.start = PostgresLsnPosition.deserialise(start) if start else None
        self.position = self.start or PostgresLsnPosition()
        self.conn = connect(url, autocommit=True, application="tiersync-logical")
        self.database = self.conn.info.dbname
        self.text = TextDecoders(self.conn)
        self.decoder = PgOutputDecoder()
        self.relations: dict[int, _RelationPlan | None] = {}
        self._relation_messages: dict[int, Relation] = {}
        self._encode: set[TableId] = set()
        self._pending: list[bytes] = []  # received payloads not handled yet, last first
        self.txn: _Txn | None = None
        self._carry: _Txn | None = None
        self._end_lsns: dict[int, int] = {}  # commit LSN of each whole transaction handed out → its end LSN
        self._lock = threading.Lock()  # position handed out → its commit's end LSN (what the slot confirms)
        self._confirm = 0  # end LSN of the newest transaction the target committed
        self._drain_to = self.conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()[0]
        self.stream = ReplicationStream(stream_url(url), slot, [publication],
                                        start_lsn=self.start.lsn if self.start else 0,
                                        messages=self.conn.info.server_version >= MESSAGES_SINCE)
        try:
            self.stream.open()
            self.stream.send_feedback(self.stream.confirmed_lsn, reply_now=True)  # its answer tells the WAL end
        except ReplicationStreamError as exc:
            self.conn.close()
            raise _translate(exc, slot) from None
        self.slot = slot

    # ------------------------------------------------------------------ reading

    def read(self, max_events: int) -> ReadBatch:
        try:
            self._report_committed()
            return self._read(max_events)
        except ReplicationStreamError as exc:
            raise _translate(exc, self.slot) from None
        except PgOutputError as exc:
            raise TerminalError(f"cannot decode the replication stream of slot {self.slot}: {exc}") from None

    def _read(self, max_events: int) -> ReadBatch:
        events: list[ChangeEvent] = []
        if self._carry is not None:  # a whole transaction held back from the previous batch
            carried, self._carry = self._carry, None
            events, self.position = carried.events, carried.position
        deadline = time.monotonic() + POLL_SECONDS
        catch_up_deadline = time.monotonic() + CATCH_UP_WAIT
        asked = False  # whether this read asked the server for a keepalive (see QUIET_SECONDS)
        while True:
            txn = self.txn
            if txn is not None and len(txn.events) > max_events:  # a transaction larger than a batch
                return self._hand_over_part(events, txn)  # (one of exactly a batch's size still goes whole)
            if txn is not None and events and len(events) + len(txn.events) >= max_events:
                return ReadBatch(events, self.position.serialise())  # the open transaction goes in the next batch
            waiting_for_commit = txn is not None
            if self._pending:
                payload = self._pending.pop()
            else:
                # between transactions a keepalive ends the wait too: the server has sent all it has for now
                wait = POLL_SECONDS if waiting_for_commit else max(deadline - time.monotonic(), 0)
                if not (waiting_for_commit or events or asked):
                    wait = min(wait, QUIET_SECONDS)
                payload = self.stream.read_payload(wait, until_keepalive=not waiting_for_commit)
            if payload is None:
                if waiting_for_commit:  # the transaction is still arriving: let the target start on it
                    if txn.events:
                        return self._hand_over_part(events, txn)
                    continue
                if not (events or asked):  # quiet so far: the server's answer ends the wait once it has sent
                    asked = True  # what it holds (an empty batch then, not a whole poll's wait)
                    self.stream.send_feedback(self._confirm, reply_now=True)  # (with what the target committed)
                    continue
                if not events and not self._caught_up():
                    now = time.monotonic()
                    if now < catch_up_deadline:  # WAL written before we started is still coming
                        if now >= deadline:  # a quiet poll (not a keepalive): ask the server where it is
                            self.stream.send_feedback(self.stream.confirmed_lsn, reply_now=True)
                            deadline = now + POLL_SECONDS
                        continue
                    return ReadBatch(events, self.position.serialise(), caught_up=False)
                if not events and not self._end_lsns:
                    self._confirm_idle()
                return ReadBatch(events, self.position.serialise())
            if (payload[0] == 73 or payload[0] == 85) and self._encode and self._encoded_changes([payload]):
                # an insert or update of a table whose rows travel encoded ('I', 'U'): take the ones already
                # received in one go, up to where this batch ends (the checks above)
                room = (max_events + 1 - len(txn.events)) if not events else max_events - len(events) - len(txn.events)
                if room > 0 and not self._pending:
                    self._encoded_run(room)
                continue
            decoded = self.decoder.decode(payload)
            kind = type(decoded)
            if kind is Begin:
                self.txn = self._begin(decoded)
            elif kind is Commit:
                txn, self.txn = self.txn, None
                if txn is None or txn.skip_all:
                    continue
                txn.position = PostgresLsnPosition(txn.commit_lsn, 0)
                with self._lock:
                    self._end_lsns[txn.commit_lsn] = decoded.end_lsn
                if events and txn.events and not txn.started and txn.events[0].origin != events[-1].origin:
                    self._carry = txn  # one target transaction carries one origin: this one opens the next batch
                    return ReadBatch(events, self.position.serialise())
                events += txn.events
                self.position = txn.position
                if txn.started:  # the end of a transaction handed over in parts: commit it now
                    return ReadBatch(events, self.position.serialise(), ends_transaction=True)
                if len(events) >= max_events:
                    return ReadBatch(events, self.position.serialise())
                deadline = min(deadline, time.monotonic() + 0.05)  # take what is already there, then go
            elif kind is Message:  # an apply session's mark: whose rows follow
                node = node_of_message(decoded.transactional, decoded.prefix, decoded.content)
                if node is not None and self.txn is not None:
                    self.txn.origin = node
            elif kind is Origin:  # the origin's node, or "" when the transaction's messages tell
                if self.txn is not None:
                    self.txn.origin = node_of_origin(decoded.name)
            elif kind is Relation:
                self._relation_messages[decoded.oid] = decoded
                self.relations[decoded.oid] = self._plan(decoded)
            elif kind in (Insert, Update, Delete, Truncate):
                self._change(decoded)

    def _hand_over_part(self, events: list[ChangeEvent], txn: _Txn) -> ReadBatch:
        """Part of a transaction larger than a batch."""
        events += txn.events
        txn.events = []
        txn.started = True
        if self.split:  # this part commits on its own, at a position inside the transaction
            self.position = PostgresLsnPosition(txn.commit_lsn, txn.seq)
            return ReadBatch(events, self.position.serialise())
        return ReadBatch(events, self.position.serialise(), more=True)

    def _begin(self, begin: Begin) -> _Txn:
        txn = _Txn(begin.final_lsn, begin.commit_ts, begin.xid)
        start = self.start
        if start is not None:
            if begin.final_lsn < start.lsn or (begin.final_lsn == start.lsn and start.applied == 0):
                txn.skip_all = True  # applied before the restart; the slot had not been told yet
            elif begin.final_lsn == start.lsn:
                txn.skip_first = start.applied
        return txn

    def encode_rows(self, tables: set[TableId], format: str | None) -> None:
        """Complete new images of ``tables`` become COPY text lines (when ``format`` is COPY text)."""
        self._encode = set(tables) if format == COPY_TEXT else set()
        for oid, relation in self._relation_messages.items():
            self.relations[oid] = self._plan(relation)

    def _plan(self, relation: Relation) -> _RelationPlan | None:
        captured = self.tables.get((relation.namespace, relation.name))
        if captured is None:
            return None
        names = tuple(c.name for c in relation.columns)
        decoders = tuple(self.text.for_type(c.type_oid) for c in relation.columns)
        missing = [k for k in captured.key if k not in names]
        if missing:
            raise TerminalError(f"{captured.info.id}: key column(s) {', '.join(missing)} are no longer in the table")
        encoding = None
        if (captured.info.id in self._encode and names == tuple(captured.info.column_names)
                and not any(c.type_oid in NOT_PORTABLE_TYPES for c in relation.columns)):
            encoding = RowEncoding(COPY_TEXT, names, line_decoder(decoders))
        positions = tuple(names.index(k) for k in captured.key)
        return _RelationPlan(captured.info.id, names, decoders, captured.key, positions, encoding,
                             tuple((i, _raw_reader(decoders[i])) for i in positions))

    def _encoded_run(self, limit: int) -> None:
        """Encoded changes among up to ``limit`` messages already received; the first other message and the
        rest wait in ``_pending`` for the main loop."""
        received = self.stream.read_buffered(limit)
        rest = received[self._encoded_changes(received):]
        rest.reverse()  # popped from the end
        self._pending = rest

    def _encoded_changes(self, payloads: list[bytes]) -> int:
        """Take the Inserts and Updates at the front of ``payloads`` whose new images travel as COPY lines;
        returns how many were taken (the first other message is decoded the usual way).

        This runs for nearly every change of a busy PostgreSQL → PostgreSQL pipeline: what stays the same for
        the whole run (the transaction, the relation) is looked up once, not per message."""
        txn = self.txn
        if txn is None or txn.skip_all or self.decoder.in_stream:
            return 0
        append, relations = txn.events.append, self.relations
        xid, origin, at = txn.xid, txn.origin or self.node_id, txn.commit_ts
        node, database = self.node_id, self.database
        seq, skip_first = txn.seq, txn.skip_first
        relation, plan = None, None
        taken = 0
        for payload in payloads:
            kind = payload[0]
            if kind != 73 and kind != 85:
                break
            if payload[1:5] != relation:
                relation, plan = payload[1:5], relations.get(_OID(payload, 1)[0])
            if plan is None or plan.encoding is None:
                break
            before = None
            if kind == 73:  # Insert: 'N' and the new tuple
                if payload[5] != 78:
                    break
                line, values = tuple_line(payload, 6)
            else:  # Update: an optional 'K'/'O' old tuple, then 'N' and the new tuple
                pos = 5
                if payload[pos] == 75 or payload[pos] == 79:
                    old, pos = decode_tuple(payload, pos + 1)
                    before = self._row(plan, old, key_only=payload[5] == 75)
                if payload[pos] != 78:
                    break
                line, values = tuple_line(payload, pos + 1)
            if line is None:  # an unchanged TOASTed value: the image is partial, a dict leaves that column alone
                break
            readers = plan.key_readers
            if len(readers) == 1:  # the common case, without a comprehension's frame
                i, read = readers[0]
                raw = values[i]
                key = (None if raw is None else read(raw),)
            else:
                key = tuple([None if values[i] is None else read(values[i]) for i, read in readers])
            seq += 1
            taken += 1
            if seq > skip_first:  # as _add, but positionally (keywords cost 0.4 µs a change): ChangeEvent's field
                # order; test_rows_travel_as_copy_lines… holds this event's fields equal to _add's
                append(ChangeEvent(CREATE if kind == 73 else UPDATE, plan.table, key, before,
                                   EncodedRow(line, plan.encoding), seq, xid, origin, (), "", at, node, database))
        txn.seq = seq
        return taken

    def _row(self, plan: _RelationPlan, values, key_only: bool = False) -> dict:
        row = {}
        positions = plan.key_positions if key_only else range(len(values))
        for i in positions:
            value = values[i]
            if value is UNCHANGED:
                continue  # an unchanged TOASTed value: leave the target's column as it is
            decode = plan.decoders[i]
            row[plan.names[i]] = value if value is None or decode is None else decode(value)
        return row

    def _change(self, message) -> None:
        txn = self.txn
        if txn is None or txn.skip_all:
            return
        if type(message) is Truncate:
            for oid in message.oids:
                plan = self.relations.get(oid)
                if plan is not None:
                    self._add(txn, Op.TRUNCATE, plan, (), None, None)
            return
        plan = self.relations.get(message.oid)
        if plan is None:
            return
        if type(message) is Insert:
            after = self._row(plan, message.new)
            self._add(txn, Op.CREATE, plan, tuple(after.get(k) for k in plan.key), None, after)
        elif type(message) is Update:
            after = self._row(plan, message.new)
            before = None if message.old is None else self._row(plan, message.old, key_only=message.old_kind == "K")
            if before is not None and any(k not in after for k in plan.key):
                after.update({k: before[k] for k in plan.key if k in before and k not in after})
            self._add(txn, Op.UPDATE, plan, tuple(after.get(k) for k in plan.key), before, after)
        else:
            before = self._row(plan, message.old, key_only=message.old_kind == "K")
            self._add(txn, Op.DELETE, plan, tuple(before.get(k) for k in plan.key), before, None)

    def _add(self, txn: _Txn, op: Op, plan: _RelationPlan, key: tuple, before, after) -> None:
        txn.seq += 1
        if txn.seq <= txn.skip_first:
            return
        txn.events.append(ChangeEvent(
            op=op, table=plan.table, key=key, before=before, after=after, seq=txn.seq, txid=txn.xid,
            origin=txn.origin or self.node_id, captured_at=txn.commit_ts, source_node=self.node_id,
            source_database=self.database))

    # ------------------------------------------------------------------ progress

    def _caught_up(self) -> bool:
        """Whether the server has sent everything written before this reader started."""
        if max(self.stream.data_wal_end, self.stream.server_wal_end) >= self._drain_to:
            self._drain_to = 0
        return self._drain_to == 0

    def _confirm_idle(self) -> None:
        """Nothing pending and nothing in flight: let the slot move to where the server has decoded."""
        wal_end = self.stream.server_wal_end
        if wal_end > self.stream.confirmed_lsn:
            self.stream.send_feedback(wal_end)

    def acknowledge(self, position: str) -> None:
        """The target committed up to ``position``; the slot is told on the next read (in the reading thread).

        Called from the applying thread while the next batch is being read: the shared map is locked.
        A part of a transaction (``applied`` > 0) confirms nothing: the slot moves only past whole ones.
        """
        done = PostgresLsnPosition.deserialise(position)
        with self._lock:
            for commit_lsn in list(self._end_lsns):  # in commit order: stop at the first not committed
                if commit_lsn > done.lsn or (commit_lsn == done.lsn and done.applied):
                    break
                self._confirm = max(self._confirm, self._end_lsns.pop(commit_lsn))

    def _report_committed(self) -> None:
        """Tell the slot what the target committed since it was last told (acknowledge records it)."""
        if self._confirm > self.stream.confirmed_lsn:
            self.stream.send_feedback(self._confirm)

    def close(self) -> None:
        try:  # so the next start need not decode the last batch again
            self._report_committed()
        except ReplicationStreamError:
            pass  # the connection is gone: the next start skips what the checkpoint says was applied
        self.stream.close()
        self.conn.close()


def _raw_reader(decode):
    """A text decoder as a function of the value's raw bytes."""
    if decode is None:
        return bytes.decode
    if decode is int:
        return int  # int() reads ASCII digits from bytes directly
    return lambda raw: decode(raw.decode())


def _translate(exc: ReplicationStreamError, slot: str):
    message = str(exc)
    if ("does not exist" in message or "was not created in this database" in message
            or ("publication" in message and "not" in message)):
        return TerminalError(f"{message} — create them with `tiersync slot create` (review with `tiersync slot sql`)")
    if "is active for PID" in message:
        return TransientError(f"slot {slot} is in use by another process: {message}")
    return TransientError(message)
