"""PostgreSQL as a source (trigger capture) and as a target."""

from __future__ import annotations

import psycopg
from psycopg.conninfo import conninfo_to_dict

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
from .connection import connect, parse_image
from .errors import translate
from .position import PostgresLogPosition
from .reader import PostgresChangeLogReader
from .scanner import PostgresChecksummer, PostgresTableScanner
from .session import PostgresSession
from .triggers import PostgresTriggerCapture


class PostgresConnector(Connector):
    scheme = "postgresql"
    conflict_policies = POLICIES
    default_schema = "public"

    def _query(self, sql: str, params=None, what: str = "reading the catalog") -> list[tuple]:
        with connect(self.url, autocommit=True) as conn:
            try:
                return conn.execute(sql, params).fetchall()
            except psycopg.Error as exc:
                raise translate(exc, what) from None

    def check(self) -> None:
        self._query("SELECT 1", what="checking the connection")

    def qualify(self, name: str) -> TableId:
        table = TableId.parse(name)
        return table if table.schema else TableId(self.default_schema, table.name)

    def describe(self, table: TableId) -> TableInfo | None:
        rel = dialect.qualified(table)
        with connect(self.url, autocommit=True) as conn:
            try:
                if not conn.execute(dialect.TABLE_EXISTS_SQL, {"rel": rel}).fetchone()[0]:
                    return None
                columns = tuple(ColumnInfo(name, type_, nullable, generated) for name, type_, nullable, generated
                                in conn.execute(dialect.DESCRIBE_SQL, {"rel": rel}).fetchall())
                key = tuple(r[0] for r in conn.execute(dialect.PRIMARY_KEY_SQL, {"rel": rel}).fetchall())
                parents = frozenset(TableId(s, n) for s, n in conn.execute(dialect.PARENTS_SQL, {"rel": rel}))
            except psycopg.Error as exc:
                raise translate(exc, f"describing {table}") from None
        return TableInfo(table, columns, key, parents)

    def unique_keys(self, table: TableId) -> list[tuple[str, ...]]:
        return [tuple(r[0]) for r in self._query(dialect.UNIQUE_KEYS_SQL, {"rel": dialect.qualified(table)})]

    def trigger_capture(self, node_id: str, consumer: str | None = None) -> TriggerCapture:
        return PostgresTriggerCapture(self.url, self.state_schema, consumer)

    def reader(self, source: SourceConfig, consumer: str, tables: list[CapturedTable], start: str | None,
               node_id: str) -> Reader:
        if source.capture not in ("trigger", "logical"):
            raise TerminalError(f"PostgreSQL has no {source.capture} capture; use capture: trigger or capture: logical")
        if source.capture == "logical":
            from .logical_reader import PostgresLogicalReader

            return PostgresLogicalReader(self.url, self._slot(source, consumer), source.publication_name(consumer),
                                         tables, start, node_id, source.split_transactions)
        return PostgresChangeLogReader(self.url, self.state_schema, consumer, tables, start, node_id,
                                       source.split_transactions)

    def _slot(self, source: SourceConfig, consumer: str) -> str:
        return source.slot_name(consumer, conninfo_to_dict(self.url).get("dbname", "postgres"))

    def capture_problems(self, source: SourceConfig, consumer: str, tables: list[CapturedTable]) -> list[str]:
        if source.capture not in ("trigger", "logical", "inbox"):
            return [f"PostgreSQL has no {source.capture} capture; use capture: trigger or capture: logical"]
        if source.capture in ("trigger", "inbox"):
            return []
        from .slots import logical_capture_problems

        with connect(self.url, autocommit=True) as conn:
            return logical_capture_problems(conn, self._slot(source, consumer), source.publication_name(consumer),
                                            tables)

    def slots(self, source: SourceConfig, consumer: str):
        """The DBA's view of a logical pipeline's slot and publication."""
        from .slots import PostgresSlotAdmin

        return PostgresSlotAdmin(self.url, self._slot(source, consumer), source.publication_name(consumer))

    def progress(self, source: SourceConfig, consumer: str, tables: list[TableId],
                 position: str | None) -> SourceProgress:
        if source.capture == "logical":
            status = self.slots(source, consumer).status()
            if status is None:
                return SourceProgress(None, None, "no slot", f"slot {self._slot(source, consumer)} does not exist")
            retained = status.retained_wal_bytes or 0
            warning = ""
            if retained > source.max_retained_wal_mb * 1024 * 1024:
                warning = (f"slot {status.name} holds {retained / 1048576:.0f} MB of WAL "
                           f"(over max_retained_wal_mb={source.max_retained_wal_mb}): is the pipeline running?")
            return SourceProgress(None, None, f"slot confirmed {status.confirmed_flush_lsn}, "
                                              f"{retained / 1048576:.1f} MB WAL held", warning)
        pos = PostgresLogPosition.deserialise(position) if position else PostgresLogPosition()
        log = f"{dialect.quote(self.state_schema)}.tiersync_change_log"
        if not self._query(dialect.TABLE_EXISTS_SQL, {"rel": log})[0][0]:
            return SourceProgress(0, None, "no change log")
        params = {"prev": pos.prev, "cur": pos.cur, "last_id": pos.last_id, "tables": [str(t) for t in tables]}
        count, oldest = self._query(dialect.pending_sql(self.state_schema), params)[0]
        snapshot = self._query(dialect.SNAPSHOT_SQL)[0][0]
        return SourceProgress(count, oldest, f"snapshot {snapshot}")

    def ensure_state(self) -> None:
        with connect(self.url) as conn:
            try:
                for statement in dialect.state_ddl(self.state_schema):
                    conn.execute(statement)
                conn.commit()
            except psycopg.Error as exc:
                raise translate(exc, "creating tiersync's state tables in the target") from None

    def target_session(self) -> TargetSession:
        return PostgresSession(self.url, self.state_schema)

    def write_statements(self, kind: str, table: TableId, columns: list[str], key: list[str]) -> list[str]:
        if kind == "truncate":
            return [dialect.truncate_sql(table)]
        if kind == "current rows":
            return [dialect.current_rows_sql(table, key, columns, 1)]
        if kind == "insert":
            return [dialect.copy_into_sql(table, columns)]
        staged = key if kind == "delete" else columns
        stage = dialect.stage_name(table, tuple(staged))
        write = {"upsert": lambda: dialect.upsert_from_stage_sql(stage, table, columns, key),
                 "delete": lambda: dialect.delete_from_stage_sql(stage, table, key)}[kind]()
        return [dialect.create_stage_sql(stage, table, staged), dialect.copy_sql(stage, staged), write]

    def exchange_store(self):
        from engine.exchange import ExchangeStore

        return ExchangeStore(lambda: connect(self.url, autocommit=True, application="tiersync-exchange"),
                             dialect.exchange_sql(self.state_schema), translate, (psycopg.Error,))

    def table_scanner(self, table: CapturedTable) -> TableScanner:
        return PostgresTableScanner(self.url, table)

    def column_kind(self, type_name: str) -> str:
        return dialect.column_kind(type_name)

    def checksummer(self, spec: ChecksumSpec) -> TableChecksummer:
        return PostgresChecksummer(self.url, spec)

    def save_reconcile_run(self, run: dict) -> None:
        with connect(self.url) as conn:
            try:
                for statement in dialect.reconcile_run_ddl(self.state_schema):
                    conn.execute(statement)
                conn.execute(dialect.save_reconcile_run_sql(self.state_schema),
                             [run[c] for c in dialect.RECONCILE_RUN_COLUMNS])
                conn.commit()
            except psycopg.Error as exc:
                raise translate(exc, "recording the reconcile run") from None

    def reconcile_runs(self, pipeline: str, limit: int) -> list[dict]:
        rel = f"{dialect.quote(self.state_schema)}.tiersync_reconcile_run"
        if not self._query(dialect.TABLE_EXISTS_SQL, {"rel": rel})[0][0]:
            return []
        columns = ["id", "finished_at"] + [c for c in dialect.RECONCILE_RUN_COLUMNS if c != "report"]
        return [dict(zip(columns, r)) for r in
                self._query(dialect.reconcile_runs_sql(self.state_schema), (pipeline, limit))]

    def _has_change_log(self) -> bool:
        rel = f"{dialect.quote(self.state_schema)}.tiersync_change_log"
        return bool(self._query(dialect.TABLE_EXISTS_SQL, {"rel": rel})[0][0])

    def fence_head(self, source: SourceConfig) -> str | None:
        if source.capture != "trigger" or not self._has_change_log():
            return None  # logical capture: positions are not comparable while a pipeline idles
        return self._query(dialect.SNAPSHOT_SQL)[0][0]

    def unapplied(self, source: SourceConfig, consumer: str, tables: list[TableId], position: str | None,
                  head: str | None = None) -> list[tuple[TableId, tuple]] | None:
        if source.capture != "trigger":
            return None
        if not self._has_change_log():
            return []
        pos = PostgresLogPosition.deserialise(position) if position else PostgresLogPosition()
        params = {"prev": pos.prev, "cur": pos.cur, "last_id": pos.last_id, "tables": [str(t) for t in tables],
                  "head": head, "limit": 1_000_000}
        rows = self._query(dialect.unapplied_sql(self.state_schema, head is not None), params)
        return [(TableId.parse(tbl), tuple(parse_image(pk) or ())) for tbl, pk in rows]

    def load_snapshot_progress(self, pipeline: str, table: str) -> SnapshotProgress | None:
        if not self._state_exists():
            return None
        rows = self._query(dialect.load_snapshot_sql(self.state_schema), (pipeline, table))
        if not rows:
            return None
        last_key, count, done = rows[0]
        return SnapshotProgress(parse_image(last_key), count, done)

    def _state_exists(self) -> bool:
        rel = f"{dialect.quote(self.state_schema)}.tiersync_checkpoint"
        return bool(self._query(dialect.TABLE_EXISTS_SQL, {"rel": rel})[0][0])

    def load_checkpoint(self, pipeline: str) -> str | None:
        if not self._state_exists():
            return None
        rows = self._query(dialect.load_checkpoint_sql(self.state_schema), (pipeline,))
        return rows[0][0] if rows else None

    def store_checkpoint(self, pipeline: str, position: str) -> None:
        self.ensure_state()
        with connect(self.url) as conn:
            conn.execute(dialect.save_checkpoint_sql(self.state_schema), (pipeline, position, 0))
            conn.commit()

    def dead_letter_count(self, pipeline: str) -> int:
        if not self._state_exists():
            return 0
        return self._query(dialect.dead_letter_count_sql(self.state_schema), (pipeline,))[0][0]

    def dead_letters(self, pipeline: str, limit: int) -> list[dict]:
        if not self._state_exists():
            return []
        rows = self._query(dialect.dead_letters_sql(self.state_schema), (pipeline, limit))
        return [dict(zip(dialect.DEAD_LETTER_COLUMNS, r)) for r in rows]
