"""Full loads: copy a table's current rows into the target through the pipeline's mapping and apply path.

The hand-over to the incremental stream needs no lock on the source. The
stream's start position is at or before the copy (the change log keeps every
change since capture was installed, or since the pipeline's checkpoint), so
after the copy the stream replays what changed during it; upserts and deletes
are idempotent, so the target may be briefly behind and then converges.
Each chunk is read and applied inside one target transaction that holds the
pipeline's apply lock, so a stream batch can never slip between a chunk's read
and its write. Progress is saved in the same transaction: a crashed load
resumes from its last chunk.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from .apply import Batch, BatchApplier, event_to_json
from .errors import ConfigError
from .event import ChangeEvent, Op, TableId
from .plan import PipelinePlan
from .seams import CapturedTable, DeadLetter, SnapshotProgress

log = logging.getLogger(__name__)

ProgressCallback = Callable[[TableId, int, int], None]  # table, rows copied, rows expected


@dataclass
class TableLoad:
    table: TableId
    rows: int = 0
    extras_deleted: int = 0
    dead_letters: int = 0
    skipped: bool = False  # already loaded


class Snapshot:
    """One full load of some or all of a pipeline's tables."""

    def __init__(self, plan: PipelinePlan, tables: list[str] | None = None, where: str | None = None,
                 chunk_rows: int = 5000, on_progress: ProgressCallback | None = None,
                 stop: threading.Event | None = None, resume_only: bool = False):
        self.plan = plan
        self.name = plan.config.name
        self.tables = plan.selected(tables)
        self.where = where
        self.chunk_rows = chunk_rows
        self.on_progress = on_progress or (lambda table, rows, total: None)
        self.stop = stop or threading.Event()
        self.resume_only = resume_only  # initial load: finish or skip what was started, never redo

    def run(self) -> list[TableLoad]:
        plan = self.plan
        plan.target.ensure_state()
        session = plan.target.target_session()
        try:
            # a (re-)load brings the target to the source's rows: conflict: reject has no before-image to hold
            # them to, while newer_wins and higher_tier_wins still keep what they keep
            rules = {t: r for t, r in plan.conflict_rules().items() if r.policy != "reject"}
            applier = BatchApplier(session, plan.target_tables, rules, plan.target_tier)
            return [self._load(applier, table) for table in self.tables if not self.stop.is_set()]
        finally:
            session.close()

    def _load(self, applier: BatchApplier, table: CapturedTable) -> TableLoad:
        mapping = self.plan.mappings[table.info.id]
        if mapping.mode == "append" or not table.key:
            raise ConfigError([f"pipeline {self.name}: {table.info.id} is replicated as history "
                               f"(mode: append or no key), so it has no current state to load"])
        saved = self.plan.target.load_snapshot_progress(self.name, str(table.info.id))
        result = TableLoad(table.info.id)
        if saved is not None and saved.done and self.resume_only:
            result.skipped = True
            return result
        resuming = saved is not None and not saved.done
        progress = saved if resuming else SnapshotProgress()
        after = tuple(progress.last_key) if resuming and progress.last_key is not None else None
        scanner = self.plan.source.table_scanner(table)
        try:
            total = scanner.count(self.where)
            log.info("snapshot of %s: %s %d rows", table.info.id, "resuming after" if resuming else "copying", total)
            while not self.stop.is_set():
                with applier.transaction(self.name) as session:
                    rows = scanner.chunk(after, self.chunk_rows, self.where)
                    if rows:
                        result.dead_letters += self._apply_chunk(applier, table, rows)
                        after = tuple(rows[-1][c] for c in table.key)
                    progress = SnapshotProgress(list(after) if after else None, progress.rows + len(rows),
                                                done=len(rows) < self.chunk_rows)
                    session.save_snapshot_progress(self.name, str(table.info.id), progress)
                self.on_progress(table.info.id, progress.rows, total)
                if progress.done:
                    break
            result.rows = progress.rows
            if progress.done and self.where is None:
                result.extras_deleted = self._delete_extras(applier, table, scanner)
        finally:
            scanner.close()
        return result

    def _apply_chunk(self, applier: BatchApplier, table: CapturedTable, rows: list[dict]) -> int:
        mapping = self.plan.mappings[table.info.id]
        now = datetime.now(timezone.utc)
        changes, rejected = [], []
        for i, row in enumerate(rows):
            event = ChangeEvent(Op.READ, table.info.id, tuple(row[c] for c in table.key), None, row, seq=i,
                                origin=self.plan.node_id, origin_tier=self.plan.node_tier, captured_at=now,
                                source_node=self.plan.node_id, snapshot=True)
            try:
                changes.extend(mapping.map(event))
            except (ValueError, TypeError, ArithmeticError) as exc:
                rejected.append(DeadLetter(self.name, str(table.info.id), str(mapping.target), "r",
                                           list(event.key), f"mapping failed: {exc}", event_to_json(event),
                                           "snapshot"))
        result = applier.apply_open(Batch(self.name, changes, "snapshot", len(rows), rejected))
        return result.dead_letters

    def _delete_extras(self, applier: BatchApplier, table: CapturedTable, source_scanner) -> int:
        """Delete target rows whose source row no longer exists (a reload after drift).

        Only where each target key column is a plain rename of a source key column, so a target key
        can be turned back into the source key it came from.
        """
        mapping = self.plan.mappings[table.info.id]
        if mapping.mode != "mirror":
            return 0
        back = mapping.source_key_of_target_key()
        if back is None:
            log.warning("snapshot of %s: target key is computed, so rows missing at the source are not "
                        "removed from the target; reconcile to find them", table.info.id)
            return 0
        target_info = self.plan.target_tables[mapping.target]
        target_scanner = self.plan.target.table_scanner(CapturedTable(target_info, mapping.target_key))
        deleted, after = 0, None
        try:
            while not self.stop.is_set():
                keys = target_scanner.keys(after, self.chunk_rows)
                if not keys:
                    break
                after = keys[-1]
                present: set[tuple] = set()
                for start in range(0, len(keys), 500):  # keep statements well under bind-parameter limits
                    present |= source_scanner.existing([back(k) for k in keys[start:start + 500]])
                gone = [k for k in keys if back(k) not in present]
                if gone:
                    with applier.transaction(self.name) as session:
                        session.delete(target_info, list(mapping.target_key), gone)
                    deleted += len(gone)
        finally:
            target_scanner.close()
        if deleted:
            log.info("snapshot of %s: removed %d target rows missing at the source", table.info.id, deleted)
        return deleted
