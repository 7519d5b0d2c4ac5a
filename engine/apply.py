"""Apply a batch to a target atomically with its checkpoint, isolating rejected rows.

The plan: compact, group by table and operation, run deletes children-first
and upserts parents-first, set-based. Tables with a conflict policy first
have the rows a group touches read (locked) and each change settled
(engine.conflict): what the policy refuses goes to the dead-letter table with
"conflict: …", the rest applies. If the target refuses a row, the batch
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
from .conflict import ConflictRule, key_of, settle
from .encoded import EncodedRow, RowEncoding, plain
from .errors import RowRejected, TerminalError
from .event import CREATE, ChangeEvent, TableId
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
    planned: list | None = None  # [(groups, changes compacted away)] per run, set by BatchApplier.prepare


@dataclass
class ApplyResult:
    applied: int = 0
    dead_letters: int = 0
    compacted_away: int = 0
    conflicts_skipped: int = 0  # conflict: newer_wins left a newer target row as it was
    errors: list[str] = field(default_factory=list)


@dataclass
class _Group:
    table: TableInfo
    kind: str
    origin: str
    columns: list[str]
    changes: list[TargetChange]
    encoded: bool = False  # rows are EncodedRows in the session's encoded_format
    fresh: bool = False  # upserts of rows the source has just inserted (see TargetSession.upsert_new)


class BatchApplier:
    """Applies batches through a :class:`TargetSession`; one instance per pipeline and target."""

    def __init__(self, session: TargetSession, tables: dict[TableId, TableInfo],
                 conflicts: dict[TableId, ConflictRule] | None = None, node_tier: str = ""):
        self.session = session
        self.tables = tables
        self.order = dependency_order(tables)
        self.conflicts = conflicts or {}  # target table → its conflict policy (engine.conflict)
        self.node_tier = node_tier  # the tier a row written locally at the target counts as

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

    def prepare(self, batch: Batch) -> None:
        """Compact and group ``batch`` now (no database work): the pipeline does it in its reading thread while
        the previous batch is being applied. :meth:`apply_open` does it itself for a batch not prepared."""
        planned = []
        for run in self._tier_runs(batch.changes):
            net = compact(run)
            planned.append((self._plan(net), len(run) - len(net)))
        batch.planned = planned

    def apply_open(self, batch: Batch) -> ApplyResult:
        """Apply ``batch`` inside the transaction the caller holds (without a checkpoint)."""
        if batch.planned is None:
            self.prepare(batch)
        result = ApplyResult()
        for groups, compacted_away in batch.planned:
            result.compacted_away += compacted_away
            self._apply_groups(batch, groups, result)
        if batch.rejected:
            self.session.save_dead_letters(batch.rejected)
            result.dead_letters += len(batch.rejected)
        return result

    def _tier_runs(self, changes: list[TargetChange]) -> list[list[TargetChange]]:
        """``changes`` cut where a key of a ``higher_tier_wins`` table is changed again from another tier: each run
        is compacted and settled on its own, in order, so such changes are settled one after the other as the
        source made them (merged, the later one's tier would decide for both). One run without such a table."""
        tiered = {table for table, rule in self.conflicts.items() if rule.policy == "higher_tier_wins"}
        if not tiered:
            return [changes]
        runs: list[list[TargetChange]] = [[]]
        tiers: dict[tuple, str] = {}  # (table, key) → the origin tier of its changes in the current run
        for change in changes:
            if change.table in tiered and change.kind in ("upsert", "delete"):
                ident = (change.table, change.key)
                if tiers.setdefault(ident, change.event.origin_tier) != change.event.origin_tier:
                    runs.append([])
                    tiers = {ident: change.event.origin_tier}
            runs[-1].append(change)
        return runs

    def _apply_groups(self, batch: Batch, groups: list[_Group], result: ApplyResult) -> None:
        """Settle and apply ``groups`` (one compacted run of ``batch``), adding to ``result``."""
        session = self.session
        refused = self._settle_conflicts(groups, batch, result)
        if refused:
            session.save_dead_letters(refused)
            result.dead_letters += len(refused)
        groups = [g for g in groups if g.changes]
        pending = sum(len(g.changes) for g in groups)
        session.savepoint()
        try:
            for group in groups:
                self._run(group, group.changes)
            session.release_savepoint()
            result.applied += pending
        except RowRejected:
            session.rollback_to_savepoint()
            session.release_savepoint()
            letters: list[DeadLetter] = []
            for group in groups:
                self._isolate(group, group.changes, batch, letters)
            if letters:
                session.save_dead_letters(letters)
            result.dead_letters += len(letters)
            result.applied += pending - len(letters)

    def _plan(self, changes: list[TargetChange]) -> list[_Group]:
        buckets: dict[tuple, list[TargetChange]] = {}
        conflicts = self.conflicts
        for change in changes:
            row = change.row
            settled = change.table in conflicts  # its policy reads values: rows decoded, no direct COPY
            if settled and type(row) is EncodedRow:
                change.row = row = row.values()
            # encoded rows group by their encoding (never with dict rows): the session writes their lines as they are
            columns = () if row is None else row.encoding if type(row) is EncodedRow else tuple(row)
            fresh = not settled and change.event.op is CREATE and change.kind == "upsert"  # just inserted at source
            buckets.setdefault((change.table, change.kind, change.event.origin, columns, fresh), []).append(change)
        rank = {table: i for i, table in enumerate(self.order)}
        kind_rank = {"truncate": -1, "delete": 0, "upsert": 1, "insert": 1}

        def sort_key(item):
            (table, kind, origin, _, _), _changes = item
            position = rank.get(table, len(rank))
            return (kind_rank[kind], -position if kind in ("delete", "truncate") else position, origin)

        groups = []
        for (table, kind, origin, columns, fresh), members in sorted(buckets.items(), key=sort_key):
            info = self.tables.get(table)
            if info is None:
                raise TerminalError(f"target table {table} is not known to the pipeline")
            encoded = type(columns) is RowEncoding
            if encoded:
                if self.session.encoded_format != columns.format:  # this target cannot write them as they are
                    for change in members:
                        change.row = change.row.values()
                    encoded = False
                columns = columns.columns
            groups.append(_Group(info, kind, origin, list(columns), members, encoded, fresh))
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
        if group.encoded:
            rows = [c.row for c in changes]
        else:
            row_of = tuple_getter(tuple(group.columns))
            rows = [row_of(c.row) for c in changes]
        if group.kind == "insert":
            session.insert(group.table, group.columns, rows)
        elif group.fresh:
            session.upsert_new(group.table, group.columns, list(self._key_columns(group)), rows)
        else:
            session.upsert(group.table, group.columns, list(self._key_columns(group)), rows)

    def _settle_conflicts(self, groups: list[_Group], batch: Batch, result: ApplyResult) -> list[DeadLetter]:
        """Leave out of ``groups`` what their tables' conflict policies refuse; returns the dead letters."""
        letters: list[DeadLetter] = []
        truncated = {g.table.id for g in groups if g.kind == "truncate"}  # their rows are gone before these run
        for group in groups:
            rule = self.conflicts.get(group.table.id)
            if rule is None or group.kind not in ("upsert", "delete") or group.table.id in truncated:
                continue
            key = self._key_columns(group)
            columns = rule.columns_to_read(key)
            rows = self.session.current_rows(group.table, list(key), columns, [c.key for c in group.changes])
            current = {key_of(row[:len(key)]): dict(zip(columns, row)) for row in rows}
            outcome = settle(rule, group.changes, current, self.node_tier)
            for change, reason in outcome.refused:
                letters.append(_dead_letter(batch, group, change, reason))
                log.warning("%s (key %s) not applied: %s", group.table.id, change.key, reason)
            result.conflicts_skipped += outcome.skipped
            group.changes = outcome.apply
        return letters

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
        event=event_to_json(change.event, target_row=plain(change.row)),
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
        "after": plain(event.after),
        "origin": event.origin,
        "path": list(event.path),
        "captured_at": event.captured_at,
    }
    if target_row is not None:
        doc["target_row"] = target_row
    return json.loads(dumps_exact(doc), parse_float=Decimal)  # JSON-safe, numbers still exact
