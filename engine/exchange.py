"""The node's exchange database: outbox, inbox and trace, and the two ends of every link.

* :class:`ExchangeStore` keeps batches waiting to be sent (outbox, numbered per
  link), batches received (inbox, keyed by sender and sequence so a repeated
  delivery is ignored) and the trace of every hop. Its SQL comes from the
  connector's dialect; the logic is here once.
* :class:`OutboxSink` takes the place of the batch applier for a pipeline whose
  target is the outbox: it routes each change, encodes one transport batch per
  link and commits them with the pipeline's checkpoint in one transaction.
* :class:`InboxReader` is the receiving side of every transport: a
  :class:`~engine.seams.Reader` whose position (per sender: the last batch
  fully read and how far into the next one) is checkpointed in the target
  with the applied rows, so delivery is exactly once in effect.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .apply import ApplyResult, Batch
from .batchcodec import decode_batch, encode_batch
from .errors import TerminalError, TiersyncError
from .event import ChangeEvent, Op, TableId
from .jsontext import dumps_exact
from .mapping import CompiledMapping, TargetChange
from .routing import Router
from .seams import ReadBatch, Reader

log = logging.getLogger(__name__)


def now_text() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class ExchangeSql:
    """A dialect's statements for the exchange tables, in its own parameter style (in the order shown)."""

    ddl: tuple[str, ...]
    begin: str
    commit: str
    rollback: str
    seq_init: str  # link
    seq_next: str  # link → the new sequence number
    outbox_insert: str  # link, seq, batch_id, payload, events, created_at
    outbox_pending: str  # link, limit → seq, batch_id, payload, events
    outbox_after: str  # link, after_seq, limit → seq, batch_id, payload, events (acknowledged or not)
    outbox_ack: str  # acked_at, link, seq
    outbox_recent: str  # link, limit → batch ids most recently acknowledged
    outbox_purge: str  # link, seq: acknowledged batches up to seq
    inbox_insert: str  # sender, seq, payload, events, received_at (ignored when present)
    inbox_senders: str
    inbox_last: str  # sender → the highest sequence in the inbox (NULL when none)
    inbox_read: str  # sender, after_seq, limit → seq, payload
    consumer_save: str  # consumer, sender, last_seq
    consumer_positions: str  # sender → consumer, last_seq
    inbox_purge: str  # sender, seq
    trace_insert: str  # batch_id, node, status, at, detail (ignored when present)
    trace_for: str  # JSON array of batch ids → batch_id, node, status, at, detail
    key_insert: str  # batch_id, tbl, key_text
    key_batches: str  # tbl, key_text → batch_id
    checkpoint_save: str  # pipeline, position, changes
    checkpoint_load: str  # pipeline → position
    outbox_backlog: str  # → link, batches, events, oldest created_at of batches not acknowledged, per link
    inbox_backlog: str  # sender, after_seq → batches, events, oldest received_at of the sender's later batches
    outbox_prune: str  # cutoff: acknowledged batches acknowledged before it
    trace_prune: str  # cutoff: trace rows older than it, except of batches still in the outbox or the inbox
    trace_key_prune: str  # key rows of batches that have no trace rows left
    link_sequences: str  # → link, last sequence number given to a batch for it
    inbox_drop_from: str  # sender, seq: the sender's batches from seq on
    outbox_unack_from: str  # link, seq: the link's batches from seq on count as not sent


@dataclass(frozen=True)
class OutgoingBatch:
    link: str
    seq: int
    batch_id: str
    payload: bytes
    events: int


@dataclass(frozen=True)
class Backlog:
    """Batches waiting at one end of a link: in the outbox not yet acknowledged by ``peer`` (the receiver), or in
    the inbox received from ``peer`` and not yet applied by ``consumer``."""

    peer: str
    batches: int
    changes: int
    oldest: str | None  # when the oldest of them was queued (outbox) or received (inbox), ISO 8601 UTC
    consumer: str = ""
    last_seq: int = 0  # outbox: the last sequence number queued for the link; inbox: the last the consumer applied

    def age_seconds(self, now: datetime | None = None) -> float:
        if self.oldest is None:
            return 0.0
        return max(0.0, ((now or datetime.now(timezone.utc)) - datetime.fromisoformat(self.oldest)).total_seconds())


@dataclass(frozen=True)
class TraceRow:
    batch_id: str
    node: str
    status: str  # queued, forwarded, sent, received, applied
    at: str
    detail: str = ""


class SequenceGap(TerminalError):
    """Batches that would leave a hole in what this node received from a sender."""


class ExchangeStore:
    """One connection to a node's exchange database."""

    def __init__(self, connect: Callable[[], Any], sql: ExchangeSql,
                 translate: Callable[[Exception, str], TiersyncError], driver_errors: tuple[type[Exception], ...]):
        self.sql = sql
        self._translate = translate
        self._errors = driver_errors
        self._connect = connect
        self.conn = connect()

    def another(self) -> ExchangeStore:
        """A second store on its own connection to the same database (for use from another thread)."""
        return ExchangeStore(self._connect, self.sql, self._translate, self._errors)

    def _run(self, sql: str, params=(), what: str = "using the exchange database"):
        try:
            cur = self.conn.cursor()
            cur.execute(sql, params)
            return cur
        except self._errors as exc:
            raise self._translate(exc, what) from None

    def _run_many(self, sql: str, rows: list[tuple], what: str = "using the exchange database") -> None:
        if rows:
            try:
                self.conn.cursor().executemany(sql, rows)
            except self._errors as exc:
                raise self._translate(exc, what) from None

    def _transaction(self, work: Callable[[], Any], what: str):
        self._run(self.sql.begin, what=what)
        try:
            result = work()
            self._run(self.sql.commit, what=what)
            return result
        except BaseException:
            try:
                self.conn.cursor().execute(self.sql.rollback)
            except self._errors:
                pass  # the connection is gone, and the transaction with it
            raise

    def ensure(self) -> None:
        self._transaction(lambda: [self._run(s) for s in self.sql.ddl], "creating the exchange tables")

    def close(self) -> None:
        try:
            self.conn.close()
        except self._errors:
            pass

    # ------------------------------------------------------------ outbox (sending side)

    def queue(self, pipeline: str, position: str, changes: int, node: str,
              batches: list[tuple[str, list[ChangeEvent]]]) -> list[str]:
        """Number and store ``batches`` (link, events) with the pipeline's checkpoint, in one transaction."""
        def work() -> list[str]:
            ids = []
            at = now_text()
            for link, events in batches:
                self._run(self.sql.seq_init, (link,))
                seq = self._run(self.sql.seq_next, (link,)).fetchone()[0]
                batch_id = f"{node}:{link}:{seq}"
                self._run(self.sql.outbox_insert, (link, seq, batch_id, encode_batch(events), len(events), at))
                self._trace(TraceRow(batch_id, node, "queued", at, f"{len(events)} changes for {link}"))
                for upstream in sorted({e.meta["batch"] for e in events if e.meta.get("batch")}):
                    self._trace(TraceRow(upstream, node, "forwarded", at, batch_id))
                keys = {(batch_id, str(e.table.name), dumps_exact(list(e.key))) for e in events}
                self._run_many(self.sql.key_insert, sorted(keys))
                ids.append(batch_id)
            self._run(self.sql.checkpoint_save, (pipeline, position, changes))
            return ids
        return self._transaction(work, "queueing batches in the outbox")

    def pending(self, link: str, limit: int) -> list[OutgoingBatch]:
        rows = self._run(self.sql.outbox_pending, (link, limit)).fetchall()
        return [OutgoingBatch(link, seq, batch_id, bytes(payload), events) for seq, batch_id, payload, events in rows]

    def delivered(self, batches: list[OutgoingBatch], node: str, how: list[str]) -> None:
        def work() -> None:
            at = now_text()
            for batch, said in zip(batches, how):
                self._run(self.sql.outbox_ack, (at, batch.link, batch.seq))
                self._trace(TraceRow(batch.batch_id, node, "sent", at, said))
            last = batches[-1]
            self._run(self.sql.outbox_purge, (last.link, last.seq - 10_000))  # recent ones stay for the trace
        if batches:
            self._transaction(work, "recording deliveries")

    def outbox_after(self, link: str, after_seq: int, limit: int) -> list[OutgoingBatch]:
        """Batches of ``link`` after ``after_seq``, delivered or not (those not yet purged)."""
        rows = self._run(self.sql.outbox_after, (link, after_seq, limit)).fetchall()
        return [OutgoingBatch(link, seq, batch_id, bytes(payload), events) for seq, batch_id, payload, events in rows]

    def exported_through(self, link: str) -> int:
        """The last sequence an offline export of ``link`` wrote (0 before the first)."""
        position = self.load_checkpoint(f"bundle-export:{link}")
        return int(position.partition(":")[2]) if position else 0

    def mark_exported(self, link: str, seq: int, rows: list[TraceRow]) -> None:
        self._transaction(lambda: (self._run(self.sql.checkpoint_save, (f"bundle-export:{link}", f"bundle:{seq}", 0)),
                                   [self._trace(r) for r in rows]), "recording an export")

    def delivered_through(self, link: str, seq: int, node: str, how: str) -> int:
        """Mark every undelivered batch of ``link`` up to ``seq`` delivered (a receiver's receipt); how many."""
        marked = 0
        while True:
            batches = [b for b in self.pending(link, 500) if b.seq <= seq]
            if not batches:
                return marked
            self.delivered(batches, node, [how] * len(batches))
            marked += len(batches)

    def recent(self, link: str, limit: int) -> list[str]:
        return [r[0] for r in self._run(self.sql.outbox_recent, (link, limit)).fetchall()]

    # ------------------------------------------------------------ inbox (receiving side)

    def receive(self, sender: str, seq: int, batch_id: str, payload: bytes, events: int, node: str) -> bool:
        """Persist a received batch; False when it was already here (a repeated delivery)."""
        return self.receive_all(sender, [(seq, batch_id, payload, events)], node)[0]

    def receive_all(self, sender: str, batches: list[tuple[int, str, bytes, int]], node: str) -> list[bool]:
        """Persist received batches (seq, id, payload, events) in one transaction; which of them were new."""
        def work() -> list[bool]:
            at = now_text()
            fresh = []
            for seq, batch_id, payload, events in batches:
                cur = self._run(self.sql.inbox_insert, (sender, seq, batch_id, payload, events, at))
                fresh.append(cur.rowcount == 1)
                if fresh[-1]:
                    self._trace(TraceRow(batch_id, node, "received", at, f"from {sender}"))
            return fresh
        return self._transaction(work, "storing received batches")

    def receive_many(self, sender: str, batches: list[tuple[int, str, bytes, int]], node: str,
                     checkpoint: tuple[str, str]) -> None:
        """Persist received batches (seq, id, payload, events) with the receiving end's position, atomically."""
        def work() -> None:
            at = now_text()
            for seq, batch_id, payload, events in batches:
                if self._run(self.sql.inbox_insert, (sender, seq, batch_id, payload, events, at)).rowcount == 1:
                    self._trace(TraceRow(batch_id, node, "received", at, f"from {sender}"))
            self._run(self.sql.checkpoint_save, (*checkpoint, sum(b[3] for b in batches)))
        self._transaction(work, "storing received batches")

    def receive_in_sequence(self, sender: str, batches: Iterable[tuple[int, str, bytes, int]],
                            node: str) -> tuple[list[int], list[int]]:
        """Persist consecutive batches in one transaction, refusing a gap; (stored, already here) sequences.

        A batch at or below what an inbox consumer has applied, or still in the inbox, is a repeat; the
        first batch must follow the highest one this node has from ``sender`` (or be one of them). ``batches``
        may be a generator that reads them as they are stored: whatever it raises rolls all of them back.
        """
        def work() -> tuple[list[int], list[int]]:
            have = self.last_received(sender)
            applied = max(dict(self._run(self.sql.consumer_positions, (sender,)).fetchall()).values(), default=0)
            at = now_text()
            stored, skipped = [], []
            for seq, batch_id, payload, events in batches:
                if not (stored or skipped) and seq > have + 1:
                    raise SequenceGap(f"batches {have + 1}–{seq - 1} from {sender} have not arrived; "
                                      f"this node has {sender}'s batches up to {have}")
                if seq > applied and self._run(self.sql.inbox_insert,
                                               (sender, seq, batch_id, payload, events, at)).rowcount == 1:
                    stored.append(seq)
                    self._trace(TraceRow(batch_id, node, "received", at, f"from {sender}"))
                else:
                    skipped.append(seq)
            return stored, skipped
        return self._transaction(work, "storing received batches")

    def last_received(self, sender: str) -> int:
        """The highest sequence this node has received from ``sender`` (applied and purged, or in the inbox)."""
        applied = max(dict(self._run(self.sql.consumer_positions, (sender,)).fetchall()).values(), default=0)
        return max(applied, self._run(self.sql.inbox_last, (sender,)).fetchone()[0] or 0)

    def senders(self) -> list[str]:
        return [r[0] for r in self._run(self.sql.inbox_senders).fetchall()]

    def inbox(self, sender: str, after_seq: int, limit: int) -> list[tuple[int, str, bytes]]:
        return [(seq, batch_id, bytes(payload))
                for seq, batch_id, payload in self._run(self.sql.inbox_read, (sender, after_seq, limit)).fetchall()]

    def consumed(self, consumer: str, done: dict[str, int], consumers: list[str]) -> None:
        """Record how far ``consumer`` has applied; drop batches every one of ``consumers`` is past."""
        def work() -> None:
            for sender, seq in done.items():
                self._run(self.sql.consumer_save, (consumer, sender, seq))
                positions = dict(self._run(self.sql.consumer_positions, (sender,)).fetchall())
                if all(c in positions for c in consumers):
                    self._run(self.sql.inbox_purge, (sender, min(positions[c] for c in consumers)))
        self._transaction(work, "recording inbox progress")

    # ------------------------------------------------------------ backlog and retention

    def outbox_backlog(self) -> list[Backlog]:
        """Per link with any: the batches not yet acknowledged by its receiver."""
        last = dict(self._run(self.sql.link_sequences).fetchall())
        waiting = {link: (batches, int(events), oldest)
                   for link, batches, events, oldest in self._run(self.sql.outbox_backlog).fetchall()}
        return [Backlog(link, *waiting.get(link, (0, 0, None)), last_seq=last.get(link, 0))
                for link in sorted(set(last) | set(waiting))]

    def inbox_backlog(self, consumers: list[str]) -> list[Backlog]:
        """Per sender and consumer: the batches received and not yet applied by that consumer (nothing to show
        for a pair with none)."""
        out = []
        for sender in sorted(self.senders()):
            positions = dict(self._run(self.sql.consumer_positions, (sender,)).fetchall())
            for consumer in consumers:
                done = positions.get(consumer, 0)
                batches, events, oldest = self._run(self.sql.inbox_backlog, (sender, done)).fetchone()
                if batches:
                    out.append(Backlog(sender, batches, int(events), oldest, consumer, done))
        return out

    def prune(self, trace_before: str, outbox_before: str) -> tuple[int, int]:
        """Delete trace rows older than ``trace_before`` (never of batches still in the outbox or the inbox) with
        their key index, and acknowledged outbox batches acknowledged before ``outbox_before``; returns how many
        trace rows and outbox batches went."""
        def work() -> tuple[int, int]:
            traces = self._run(self.sql.trace_prune, (trace_before,)).rowcount
            self._run(self.sql.trace_key_prune)
            batches = self._run(self.sql.outbox_prune, (outbox_before,)).rowcount
            return traces, batches
        return self._transaction(work, "pruning the trace and the outbox")

    # ------------------------------------------------------------ a sender's sequence starting again

    def accept_sequence(self, sender: str, first_seq: int, consumers: list[str],
                        checkpoint: tuple[str, str] | None) -> int:
        """Make ``first_seq`` the next batch taken from ``sender``: its received batches from there on are dropped
        (the sender sends them again) and every consumer stands just before it; ``checkpoint`` (name, position)
        is saved in the same transaction (a kafka receiving end's). Returns how many batches were dropped."""
        def work() -> int:
            dropped = self._run(self.sql.inbox_drop_from, (sender, first_seq)).rowcount
            for consumer in consumers:
                self._run(self.sql.consumer_save, (consumer, sender, first_seq - 1))
            if checkpoint is not None:
                self._run(self.sql.checkpoint_save, (*checkpoint, 0))
            return dropped
        return self._transaction(work, "accepting a new sequence")

    def resend_from(self, link: str, first_seq: int) -> int:
        """Count the link's outbox batches from ``first_seq`` on as not sent, so they go again; how many."""
        return self._transaction(lambda: self._run(self.sql.outbox_unack_from, (link, first_seq)).rowcount,
                                 "marking batches to send again")

    # ------------------------------------------------------------ trace

    def _trace(self, row: TraceRow) -> None:
        self._run(self.sql.trace_insert, (row.batch_id, row.node, row.status, row.at, row.detail))

    def add_trace(self, rows: list[TraceRow]) -> None:
        if rows:
            self._transaction(lambda: self._run_many(self.sql.trace_insert, [
                (r.batch_id, r.node, r.status, r.at, r.detail) for r in rows]), "recording the trace")

    def trace(self, batch_ids: list[str]) -> list[TraceRow]:
        """Every hop of these batches and of the batches they were forwarded as, in time order."""
        seen: set[str] = set()
        level = set(batch_ids)
        rows: list[TraceRow] = []
        while level:  # one query per hop of forwarding
            seen |= level
            found = [TraceRow(*row) for row in self._run(self.sql.trace_for, (json.dumps(sorted(level)),)).fetchall()]
            rows += found
            level = {r.detail for r in found if r.status == "forwarded"} - seen
        return sorted(rows, key=lambda r: (r.at, r.batch_id))

    def batches_with_key(self, table: str, key: list) -> list[str]:
        return [r[0] for r in self._run(self.sql.key_batches, (table, dumps_exact(key))).fetchall()]

    def load_checkpoint(self, pipeline: str) -> str | None:
        row = self._run(self.sql.checkpoint_load, (pipeline,)).fetchone()
        return row[0] if row else None


# ---------------------------------------------------------------- the sending side of a pipeline

class OutboxSink:
    """Routes a pipeline's mapped changes to links and queues them with the checkpoint (in place of apply)."""

    def __init__(self, store: ExchangeStore, router: Router, node: str, mappings: dict[TableId, CompiledMapping],
                 batch_sizes: dict[str, int], from_capture: bool):
        self.store, self.router, self.node = store, router, node
        self.mappings = mappings
        self.batch_sizes = batch_sizes
        self.from_capture = from_capture
        self.echoes_skipped = 0

    def _exchange_event(self, change: TargetChange) -> ChangeEvent:
        event = change.event
        before = after = None
        op = event.op
        if change.kind in ("upsert", "insert"):
            after = change.row
            op = op if op in (Op.CREATE, Op.UPDATE, Op.READ) else Op.UPDATE
        elif change.kind == "delete":
            op = Op.DELETE
            mapping = self.mappings.get(event.table)
            if event.before is not None and mapping is not None:
                before = mapping.map_row(event.before, event)
            else:
                before = dict(zip(change.key_columns, change.key))
        path = event.path if event.path[-1:] == (self.node,) else event.path + (self.node,)
        return event.evolve(op=op, table=TableId(None, change.table.name), key=tuple(change.key), before=before,
                            after=after, path=path, meta=dict(event.meta))

    def apply(self, batch: Batch) -> ApplyResult:
        per_link: dict[str, list[ChangeEvent]] = {}
        for change in batch.changes:
            event = change.event
            if self.from_capture and event.origin != self.node:
                # applied here on behalf of another node: it travels on through the inbox, never as a new change
                self.echoes_skipped += 1
                continue
            out = self._exchange_event(change)
            for link in self.router.destinations(out.table.name, out.after or out.before, out.origin, event.path):
                per_link.setdefault(link, []).append(out)
        batches = []
        for link, events in per_link.items():
            size = self.batch_sizes.get(link, 1000)
            batches += [(link, events[i:i + size]) for i in range(0, len(events), size)]
        if batch.rejected:
            for letter in batch.rejected:
                log.error("pipeline %s: not sent, mapping failed for %s key %s: %s", batch.pipeline,
                          letter.source_table, letter.key, letter.error)
        self.store.queue(batch.pipeline, batch.position, batch.events, self.node, batches)
        return ApplyResult(applied=sum(len(e) for _, e in batches), dead_letters=len(batch.rejected))

    def close(self) -> None:
        self.store.close()


# ---------------------------------------------------------------- the receiving side of every transport

class InboxReader(Reader):
    """Reads received batches, per sender in sequence order, one origin per read (one target transaction).

    The pipeline reads the next batch on its prefetch thread while it acknowledges the last one, so
    acknowledgements use a connection of their own: two threads stepping statements on one connection
    break each other's transactions (an acknowledgement's write would start on the read's stale snapshot,
    and SQLite reports the other thread's result code as the error: "another row available").
    """

    def __init__(self, store: ExchangeStore, consumer: str, tables: dict[str, TableId], start: str | None,
                 node: str, consumers: list[str], records_apply: bool):
        self.store, self.consumer, self.tables, self.node = store, consumer, tables, node
        self.consumers = consumers
        self.records_apply = records_apply
        self.position: dict[str, list[int]] = self.parse(start) if start else {}
        self._acked: dict[str, int] = {s: p[0] for s, p in self.position.items()}
        self._cache: dict[tuple[str, int], tuple[str, list[ChangeEvent]]] = {}
        self._ack_store: ExchangeStore | None = None  # opened at the first acknowledgement

    @staticmethod
    def parse(text: str) -> dict[str, list[int]]:
        kind, _, body = text.partition(":")
        if kind != "inbox":
            raise TiersyncError(f"checkpoint {text!r} is not an inbox position: the pipeline's source changed; "
                                f"reset it with `tiersync checkpoint set`")
        return {sender: list(p) for sender, p in json.loads(body).items()}

    @staticmethod
    def serialise(position: dict[str, list[int]]) -> str:
        return "inbox:" + json.dumps(position, sort_keys=True, separators=(",", ":"))

    def _batches(self, sender: str, done: int) -> list[tuple[int, str, list[ChangeEvent]]]:
        out = []
        wanted = done + 1
        for seq, batch_id, payload in self.store.inbox(sender, done, 20):
            if seq != wanted:  # a gap: wait for the missing batch, never skip it
                log.warning("inbox: batch %s:%s is missing (have %s); waiting for it", sender, wanted, seq)
                break
            cached = self._cache.get((sender, seq))
            if cached is None:
                cached = (batch_id, decode_batch(payload))
                self._cache[(sender, seq)] = cached
            out.append((seq, *cached))
            wanted += 1
        return out

    def read(self, max_events: int) -> ReadBatch:
        events: list[ChangeEvent] = []
        origin: str | None = None
        moved = full = False
        for sender in sorted(self.store.senders()):
            done, offset = self.position.get(sender, [0, 0])
            for seq, batch_id, batch in self._batches(sender, done):
                while offset < len(batch):
                    if len(events) >= max_events:
                        full = True
                        break
                    event = batch[offset]
                    table = self.tables.get(event.table.name)
                    if table is not None:
                        if origin is None:
                            origin = event.origin
                        elif event.origin != origin:  # one origin per target transaction
                            full = True
                            break
                        events.append(event.evolve(table=table, meta={**event.meta, "batch": batch_id}))
                    offset += 1
                    moved = True
                if offset < len(batch):
                    break
                self._cache.pop((sender, seq), None)
                done, offset, moved = seq, 0, True
            self.position[sender] = [done, offset]
            if full:
                break
        return ReadBatch(events, self.serialise(self.position), ends_transaction=moved and not events)

    def acknowledge(self, position: str) -> None:
        done = {sender: p[0] for sender, p in self.parse(position).items()}
        newly = {s: seq for s, seq in done.items() if seq > self._acked.get(s, 0)}
        if not newly:
            return
        if self._ack_store is None:
            self._ack_store = self.store.another()
        self._ack_store.consumed(self.consumer, newly, self.consumers)
        if self.records_apply:
            at = now_text()
            rows = [TraceRow(f"{s}:{self.node}:{seq}", self.node, "applied", at, self.consumer)
                    for s, last in newly.items() for seq in range(self._acked.get(s, 0) + 1, last + 1)]
            self._ack_store.add_trace(rows)
        self._acked.update(newly)

    def close(self) -> None:
        if self._ack_store is not None:
            self._ack_store.close()
            self._ack_store = None
        self.store.close()
