"""Apply a batch to a target atomically with its checkpoint, isolating rejected rows.

The plan: compact, group by table and operation, run deletes children-first
and upserts parents-first, set-based. If the target refuses a row, the batch
is retried inside savepoints, halving the failing group until the bad rows
are alone; they go to the dead-letter table with the reason and the event,
and everything else still applies. The checkpoint is written in the same
transaction, so a batch is applied entirely or not at all.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal

from .compaction import compact
from .errors import RowRejected, TerminalError
from .event import ChangeEvent, TableId
from .jsontext import dumps_exact
from .mapping import TargetChange, tuple_getter
from .schema import TableInfo, dependency_order
from .seams import DeadLetter, TargetSession

log = logging.getLogger(__name__)


@dataclass
class Batch:
    pipeline: str
    changes: list[TargetChange]
    position: str
    events: int
    rejected: list[DeadLetter] = field(default_factory=list)
    more: bool = False  # part of a source transaction that goes on in the next batch


@dataclass
class ApplyResult:
    applied: int = 0
    dead_letters: int = 0
    compacted_away: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class _Group:
    table: TableInfo
    kind: str
    origin: str
    columns: list[str]
    changes: list[TargetChange]


class BatchApplier:
    """Applies batches through a :class:`TargetSession`; one instance per pipeline and target."""

    def __init__(self, session: TargetSession, tables: dict[TableId, TableInfo],
                 newer_wins: dict[TableId, str] | None = None):
        self.session = session
        self.tables = tables
        self.order = dependency_order(tables)
        self.newer_wins = newer_wins or {}  # target table → its commit-time column (conflict: newer_wins)

    @contextmanager
    def transaction(self, pipeline: str) -> Iterator[TargetSession]:
        """One target transaction, holding the pipeline's apply lock, committed at the end or rolled back."""
        session = self.session
        session.begin()
        try:
            session.lock_pipeline(pipeline)
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise

    def apply(self, batch: Batch) -> ApplyResult:
        """Apply ``batch`` and its checkpoint in one transaction."""
        with self.transaction(batch.pipeline) as session:
            result = self.apply_open(batch)
            session.save_checkpoint(batch.pipeline, batch.position, batch.events)
        return result

    def apply_open(self, batch: Batch) -> ApplyResult:
        """Apply ``batch`` inside the transaction the caller holds (without a checkpoint)."""
        net = compact(batch.changes)
        result = ApplyResult(compacted_away=len(batch.changes) - len(net))
        groups = self._plan(net)
        session = self.session
        session.savepoint()
        try:
            for group in groups:
                self._run(group, group.changes)
            session.release_savepoint()
            result.applied = len(net)
        except RowRejected:
            session.rollback_to_savepoint()
            session.release_savepoint()
            letters: list[DeadLetter] = []
            for group in groups:
                self._isolate(group, group.changes, batch, letters)
            if letters:
                session.save_dead_letters(letters)
            result.dead_letters = len(letters)
            result.applied = len(net) - len(letters)
        if batch.rejected:
            session.save_dead_letters(batch.rejected)
            result.dead_letters += len(batch.rejected)
        return result

    def _plan(self, changes: list[TargetChange]) -> list[_Group]:
        buckets: dict[tuple, list[TargetChange]] = {}
        for change in changes:
            columns = tuple(change.row) if change.row is not None else ()
            buckets.setdefault((change.table, change.kind, change.event.origin, columns), []).append(change)
        rank = {table: i for i, table in enumerate(self.order)}
        kind_rank = {"truncate": -1, "delete": 0, "upsert": 1, "insert": 1}

        def sort_key(item):
            (table, kind, origin, _), _changes = item
            position = rank.get(table, len(rank))
            return (kind_rank[kind], -position if kind in ("delete", "truncate") else position, origin)

        groups = []
        for (table, kind, origin, columns), members in sorted(buckets.items(), key=sort_key):
            info = self.tables.get(table)
            if info is None:
                raise TerminalError(f"target table {table} is not known to the pipeline")
            groups.append(_Group(info, kind, origin, list(columns), members))
        return groups

    def _run(self, group: _Group, changes: list[TargetChange]) -> None:
        session = self.session
        session.set_origin(group.origin or None)
        if group.kind == "truncate":
            session.truncate(group.table)
            return
        if group.kind == "delete":
            key = list(self._key_columns(group))
            session.delete(group.table, key, [c.key for c in changes])
            return
        row_of = tuple_getter(tuple(group.columns))
        rows = [row_of(c.row) for c in changes]
        if group.kind == "insert":
            session.insert(group.table, group.columns, rows)
        elif group.table.id in self.newer_wins:
            session.upsert_newer(group.table, group.columns, list(self._key_columns(group)), rows,
                                 self.newer_wins[group.table.id])
        else:
            session.upsert(group.table, group.columns, list(self._key_columns(group)), rows)

    def _key_columns(self, group: _Group) -> tuple[str, ...]:
        return group.changes[0].key_columns or group.table.primary_key

    def _isolate(self, group: _Group, changes: list[TargetChange], batch: Batch,
                 letters: list[DeadLetter]) -> None:
        """Apply ``changes``; on refusal split in halves until each refused row stands alone."""
        session = self.session
        session.savepoint()
        try:
            self._run(group, changes)
            session.release_savepoint()
            return
        except RowRejected as exc:
            session.rollback_to_savepoint()
            session.release_savepoint()
            if len(changes) == 1:
                letters.append(_dead_letter(batch, group, changes[0], str(exc)))
                log.warning("row rejected by %s (key %s): %s", group.table.id, changes[0].key, exc)
                return
        middle = len(changes) // 2
        self._isolate(group, changes[:middle], batch, letters)
        self._isolate(group, changes[middle:], batch, letters)


def _dead_letter(batch: Batch, group: _Group, change: TargetChange, error: str) -> DeadLetter:
    return DeadLetter(
        pipeline=batch.pipeline,
        source_table=str(change.event.table),
        target_table=str(group.table.id),
        op=change.event.op.value,
        key=list(change.key),
        error=error,
        event=event_to_json(change.event, target_row=change.row),
        position=batch.position,
    )


def event_to_json(event: ChangeEvent, target_row: dict | None = None) -> dict:
    """The event as a JSON-safe dict (used for dead letters and for file output)."""
    doc = {
        "op": event.op.value,
        "source": {"node": event.source_node, "database": event.source_database, "table": str(event.table),
                   "seq": event.seq, "txid": event.txid, "snapshot": event.snapshot},
        "key": list(event.key),
        "before": event.before,
        "after": event.after,
        "origin": event.origin,
        "path": list(event.path),
        "captured_at": event.captured_at,
    }
    if target_row is not None:
        doc["target_row"] = target_row
    return json.loads(dumps_exact(doc), parse_float=Decimal)  # JSON-safe, numbers still exact
