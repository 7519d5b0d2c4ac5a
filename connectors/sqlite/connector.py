"""SQLite as a source (trigger capture) and as a target; the embedded default."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime

from engine.config import SourceConfig
from engine.conflict import POLICIES
from engine.errors import TerminalError
from engine.event import TableId
from engine.schema import ColumnInfo, TableInfo
from engine.seams import (
    CapturedTable,
    ChecksumSpec,
    Connector,
    Reader,
    SnapshotProgress,
    SourceProgress,
    TableChecksummer,
    TableScanner,
    TargetSession,
    TriggerCapture,
)

from . import dialect
from .connection import connect, path_of, translate
from .position import SqliteLogPosition
from .reader import SqliteChangeLogReader
from .scanner import SqliteChecksummer, SqliteTableScanner
from .session import SqliteSession
from .triggers import SqliteTriggerCapture


class SqliteConnector(Connector):
    conflict_policies = POLICIES  # read through current_rows (engine.conflict)
    scheme = "sqlite"

    def _query(self, sql: str, params=(), what: str = "reading the catalog") -> list[tuple]:
        conn = connect(self.url)
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise translate(exc, what) from None
        finally:
            conn.close()

    def check(self) -> None:
        self._query("SELECT 1", what="checking the database")

    def qualify(self, name: str) -> TableId:
        return TableId(None, TableId.parse(name).name)  # SQLite has a single schema

    def describe(self, table: TableId) -> TableInfo | None:
        if not self._query(dialect.TABLE_EXISTS_SQL, (table.name,)):
            return None
        rows = self._query(dialect.COLUMNS_SQL, (table.name,))
        columns = tuple(ColumnInfo(name, type_, not notnull, hidden in (2, 3))
                        for name, type_, notnull, _, hidden in rows
                        if hidden != 1)
        key = tuple(name for name, *_ , pk, hidden in sorted(rows, key=lambda r: r[3]) if pk)
        parents = frozenset(TableId(None, r[0]) for r in self._query(dialect.PARENTS_SQL, (table.name,)))
        return TableInfo(table, columns, key, parents)

    def unique_keys(self, table: TableId) -> list[tuple[str, ...]]:
        keys = []
        info = self.describe(table)
        if info and info.primary_key:
            keys.append(info.primary_key)
        for name, unique in self._query(dialect.UNIQUE_INDEXES_SQL, (table.name,)):
            if unique:
                keys.append(tuple(r[0] for r in self._query(dialect.INDEX_COLUMNS_SQL, (name,))))
        return keys

    def trigger_capture(self, node_id: str, consumer: str | None = None) -> TriggerCapture:
        return SqliteTriggerCapture(self.url, consumer)

    def reader(self, source: SourceConfig, consumer: str, tables: list[CapturedTable], start: str | None,
               node_id: str) -> Reader:
        if source.capture != "trigger":
            raise TerminalError(f"SQLite has no {source.capture} capture; use capture: trigger")
        return SqliteChangeLogReader(self.url, consumer, tables, start, node_id)

    def capture_problems(self, source: SourceConfig, consumer: str, tables: list[CapturedTable]) -> list[str]:
        if source.capture not in ("trigger", "inbox"):
            return [f"SQLite has no {source.capture} capture; use capture: trigger"]
        return []

    def progress(self, source: SourceConfig, consumer: str, tables: list[TableId],
                 position: str | None) -> SourceProgress:
        if not self._has("tiersync_change_log"):
            return SourceProgress(0, None, "no change log")
        last_id = SqliteLogPosition.deserialise(position).last_id if position else 0
        count, oldest = self._query(dialect.PENDING_SQL, (last_id, json.dumps([str(t) for t in tables])))[0]
        head = self._query(dialect.LOG_HEAD_SQL)[0][0]
        return SourceProgress(count, datetime.fromisoformat(oldest.replace("Z", "+00:00")) if oldest else None,
                              f"change-log id {head}")

    def ensure_state(self) -> None:
        conn = connect(self.url)
        try:
            for statement in dialect.STATE_DDL:
                conn.execute(statement)
        except sqlite3.Error as exc:
            raise translate(exc, "creating tiersync's state tables") from None
        finally:
            conn.close()

    def target_session(self) -> TargetSession:
        return SqliteSession(self.url)

    def write_statements(self, kind: str, table: TableId, columns: list[str], key: list[str]) -> list[str]:
        if kind == "truncate":
            return [dialect.truncate_sql(table)]
        if kind == "current rows":
            return [dialect.current_rows_sql(table, key, columns, 1)]
        return [{"upsert": lambda: dialect.upsert_sql(table, columns, key),
                 "insert": lambda: dialect.insert_sql(table, columns),
                 "delete": lambda: dialect.delete_sql(table, key)}[kind]()]

    def exchange_store(self):
        from engine.exchange import ExchangeStore

        return ExchangeStore(lambda: connect(self.url, must_exist=False), dialect.exchange_sql(), translate,
                             (sqlite3.Error,))

    def table_scanner(self, table: CapturedTable) -> TableScanner:
        return SqliteTableScanner(self.url, table)

    def column_kind(self, type_name: str) -> str:
        return dialect.column_kind(type_name)

    def checksummer(self, spec: ChecksumSpec) -> TableChecksummer:
        return SqliteChecksummer(self.url, spec)

    def save_reconcile_run(self, run: dict) -> None:
        conn = connect(self.url)
        try:
            conn.execute(dialect.RECONCILE_RUN_DDL)
            conn.execute(dialect.SAVE_RECONCILE_RUN_SQL, [run[c] for c in dialect.RECONCILE_RUN_COLUMNS])
        except sqlite3.Error as exc:
            raise translate(exc, "recording the reconcile run") from None
        finally:
            conn.close()

    def reconcile_runs(self, pipeline: str, limit: int) -> list[dict]:
        if not self._has("tiersync_reconcile_run"):
            return []
        columns = ["id", "finished_at"] + [c for c in dialect.RECONCILE_RUN_COLUMNS if c != "report"]
        return [dict(zip(columns, r)) for r in self._query(dialect.RECONCILE_RUNS_SQL, (pipeline, limit))]

    def fence_head(self, source: SourceConfig) -> str | None:
        if not self._has("tiersync_change_log"):
            return None
        return str(self._query(dialect.LOG_HEAD_SQL)[0][0])

    def unapplied(self, source: SourceConfig, consumer: str, tables: list[TableId], position: str | None,
                  head: str | None = None) -> list[tuple[TableId, tuple]] | None:
        if not self._has("tiersync_change_log"):
            return []
        last_id = SqliteLogPosition.deserialise(position).last_id if position else 0
        upto = int(head) if head is not None else 2 ** 62
        rows = self._query(dialect.UNAPPLIED_SQL, (last_id, upto, json.dumps([str(t) for t in tables])))
        return [(TableId.parse(tbl), tuple(json.loads(pk)) if pk else ()) for tbl, pk in rows]

    def load_snapshot_progress(self, pipeline: str, table: str) -> SnapshotProgress | None:
        if not self._has("tiersync_snapshot"):
            return None
        rows = self._query(dialect.LOAD_SNAPSHOT_SQL, (pipeline, table))
        if not rows:
            return None
        last_key, count, done = rows[0]
        return SnapshotProgress(json.loads(last_key) if last_key else None, count, bool(done))

    def _state_exists(self) -> bool:
        return self._has("tiersync_checkpoint")

    def _has(self, table: str) -> bool:
        return bool(self._query(dialect.TABLE_EXISTS_SQL, (table,)))

    def load_checkpoint(self, pipeline: str) -> str | None:
        if not self._state_exists():
            return None
        rows = self._query(dialect.LOAD_CHECKPOINT_SQL, (pipeline,))
        return rows[0][0] if rows else None

    def store_checkpoint(self, pipeline: str, position: str) -> None:
        self.ensure_state()
        conn = connect(self.url)
        try:
            conn.execute(dialect.SAVE_CHECKPOINT_SQL, (pipeline, position, 0))
        finally:
            conn.close()

    def dead_letter_count(self, pipeline: str) -> int:
        if not self._state_exists():
            return 0
        return self._query(dialect.DEAD_LETTER_COUNT_SQL, (pipeline,))[0][0]

    def dead_letters(self, pipeline: str, limit: int) -> list[dict]:
        if not self._state_exists():
            return []
        rows = self._query(dialect.DEAD_LETTERS_SQL, (pipeline, limit))
        return [dict(zip(dialect.DEAD_LETTER_COLUMNS, r)) for r in rows]

    @property
    def path(self) -> str:
        return path_of(self.url)
