"""MySQL and MariaDB as a source (trigger capture) and as a target."""

from __future__ import annotations

import json
import re
from datetime import timezone

import pymysql

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

from . import dialect, reconcile_sql
from .connection import as_utc, connect, database_of, zero_dates_kept
from .errors import translate
from .position import MysqlLogPosition
from .reader import MysqlChangeLogReader, decode_image, image_decoders
from .scanner import MysqlChecksummer, MysqlTableScanner
from .session import MysqlSession
from .triggers import MysqlTriggerCapture

# MariaDB's JSON is LONGTEXT with a json_valid() check
_JSON_CHECK = re.compile(r"^json_valid\(`(.+)`\)$", re.IGNORECASE)
JSON_CHECKS_SQL = ("SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS "
                   "WHERE CONSTRAINT_SCHEMA = %s AND TABLE_NAME = %s")


class MysqlConnector(Connector):
    """One database (the URL's); tiersync's own tables live in it, named ``tiersync_*``."""

    conflict_policies = POLICIES  # read through current_rows (engine.conflict)
    scheme = "mysql"

    def __init__(self, url: str, state_schema: str = "tiersync"):
        super().__init__(url, state_schema)
        try:
            self.database = database_of(url)
        except ValueError as exc:
            raise TerminalError(str(exc)) from None
        if not self.database:
            raise TerminalError("a MySQL/MariaDB URL names its database: mysql://user:password@host:port/database")

    def _query(self, sql: str, params=None, what: str = "reading the catalog") -> list[tuple]:
        conn = connect(self.url, autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall())
        except pymysql.Error as exc:
            raise translate(exc, what) from None
        finally:
            conn.close()

    def check(self) -> None:
        self._query("SELECT 1", what="checking the connection")

    def qualify(self, name: str) -> TableId:
        table = TableId.parse(name)
        return table if table.schema else TableId(self.database, table.name)

    def describe(self, table: TableId) -> TableInfo | None:
        schema = table.schema or self.database
        if not self._query(dialect.TABLE_EXISTS_SQL, (schema, table.name))[0][0]:
            return None
        json_columns = set()
        try:
            for (clause,) in self._query(JSON_CHECKS_SQL, (schema, table.name)):
                match = _JSON_CHECK.match(clause.strip())
                if match:
                    json_columns.add(match.group(1))
        except TerminalError:
            pass  # MySQL before 8.0.16 has no CHECK_CONSTRAINTS; its JSON columns say json
        columns = tuple(ColumnInfo(name, "json" if name in json_columns else type_, bool(nullable), bool(generated))
                        for name, type_, nullable, generated in self._query(dialect.COLUMNS_SQL, (schema, table.name)))
        keys = self._unique(schema, table.name)
        primary = keys.get("PRIMARY", ())
        parents = frozenset(TableId(s, n) for s, n in self._query(dialect.PARENTS_SQL, (schema, table.name)))
        return TableInfo(TableId(schema, table.name), columns, primary, parents)

    def _unique(self, schema: str, name: str) -> dict[str, tuple[str, ...]]:
        keys: dict[str, list[str]] = {}
        for index, column in self._query(dialect.UNIQUE_KEYS_SQL, (schema, name)):
            keys.setdefault(index, []).append(column)
        return {k: tuple(v) for k, v in keys.items()}

    def unique_keys(self, table: TableId) -> list[tuple[str, ...]]:
        return list(self._unique(table.schema or self.database, table.name).values())

    def trigger_capture(self, node_id: str, consumer: str | None = None) -> TriggerCapture:
        return MysqlTriggerCapture(self.url, consumer)

    def capture_problems(self, source: SourceConfig, consumer: str, tables: list[CapturedTable]) -> list[str]:
        if source.capture == "binlog":
            from .binlog_reader import binlog_capture_problems

            return binlog_capture_problems(self.url)
        if source.capture != "trigger":
            return [f"MySQL/MariaDB has no {source.capture} capture; use capture: trigger or capture: binlog"]
        return []

    def reader(self, source: SourceConfig, consumer: str, tables: list[CapturedTable], start: str | None,
               node_id: str) -> Reader:
        if source.capture == "binlog":
            from .binlog_reader import binlog_reader_for

            return binlog_reader_for(self.url, source, consumer, tables, start, node_id)
        if source.capture != "trigger":
            raise TerminalError(f"MySQL/MariaDB has no {source.capture} capture; use capture: trigger or "
                                f"capture: binlog")
        return MysqlChangeLogReader(self.url, consumer, tables, start, node_id)

    def _has(self, table: str) -> bool:
        return bool(self._query(dialect.TABLE_EXISTS_SQL, (self.database, table))[0][0])

    def progress(self, source: SourceConfig, consumer: str, tables: list[TableId],
                 position: str | None) -> SourceProgress:
        if source.capture == "binlog":
            from .binlog_reader import binlog_progress

            return binlog_progress(self.url, consumer, position)
        if not self._has(dialect.CHANGE_LOG):
            return SourceProgress(0, None, "no change log")
        pos = MysqlLogPosition.deserialise(position) if position else MysqlLogPosition()
        params: list = [pos.high] + [v for gap in pos.open_gaps for v in gap] + [str(t) for t in tables]
        count, oldest = self._query(dialect.pending_sql(len(tables), len(pos.open_gaps)), params)[0]
        head = self._query(dialect.HEAD_SQL)[0][0]
        warning = f"{len(pos.open_gaps)} id gaps held open for running transactions" if pos.open_gaps else ""
        return SourceProgress(count, as_utc(oldest), f"change-log id {head}", warning)

    def ensure_state(self) -> None:
        conn = connect(self.url, autocommit=True)
        try:
            with conn.cursor() as cur:
                for statement in dialect.STATE_DDL:
                    cur.execute(statement)
        except pymysql.Error as exc:
            raise translate(exc, "creating tiersync's state tables in the target") from None
        finally:
            conn.close()

    def target_session(self) -> TargetSession:
        return MysqlSession(self.url)

    def table_scanner(self, table: CapturedTable) -> TableScanner:
        return MysqlTableScanner(self.url, table)

    # ---- reconciliation (checksum SQL in reconcile_sql.py, the rest in dialect.py)

    def column_kind(self, type_name: str) -> str:
        return reconcile_sql.column_kind(type_name)

    def pushable(self, kind: str) -> bool:
        return reconcile_sql.pushable(kind)

    def checksummer(self, spec: ChecksumSpec) -> TableChecksummer:
        return MysqlChecksummer(self.url, spec)

    def save_reconcile_run(self, run: dict) -> None:
        started = run["started_at"]
        if getattr(started, "tzinfo", None) is not None:  # the session is UTC; TIMESTAMP takes naive UTC
            started = started.astimezone(timezone.utc).replace(tzinfo=None)
        values = [started if c == "started_at" else run[c] for c in dialect.RECONCILE_RUN_COLUMNS]
        conn = connect(self.url, autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute(dialect.RECONCILE_RUN_DDL)
                cur.execute(dialect.SAVE_RECONCILE_RUN_SQL, values)
        except pymysql.Error as exc:
            raise translate(exc, "recording the reconcile run") from None
        finally:
            conn.close()

    def reconcile_runs(self, pipeline: str, limit: int) -> list[dict]:
        if not self._has("tiersync_reconcile_run"):
            return []
        columns = ["id", "finished_at"] + [c for c in dialect.RECONCILE_RUN_COLUMNS if c != "report"]
        runs = [dict(zip(columns, r)) for r in self._query(dialect.RECONCILE_RUNS_SQL, (pipeline, limit))]
        for run in runs:
            run["finished_at"], run["started_at"] = as_utc(run["finished_at"]), as_utc(run["started_at"])
        return runs

    def fence_head(self, source: SourceConfig) -> str | None:
        """The change log's highest id: every change committed now has an id at or below it.

        Binlog capture: None (a binlog position is not compared with the checkpoint here, so no fence: one read).
        """
        if source.capture != "trigger" or not self._has(dialect.CHANGE_LOG):
            return None
        return str(self._query(dialect.HEAD_SQL)[0][0])

    def unapplied(self, source: SourceConfig, consumer: str, tables: list[TableId], position: str | None,
                  head: str | None = None) -> list[tuple[TableId, tuple]] | None:
        if source.capture != "trigger":
            return None
        if not self._has(dialect.CHANGE_LOG) or not tables:
            return []
        pos = MysqlLogPosition.deserialise(position) if position else MysqlLogPosition()
        params: list = [pos.high] + [v for gap in pos.open_gaps for v in gap] + [str(t) for t in tables]
        if head is not None:
            params.append(int(head))
        rows = self._query(dialect.unapplied_sql(len(tables), len(pos.open_gaps), head is not None),
                           params + [1_000_000], "reading the change log")
        keep = zero_dates_kept(self.url)
        decoders: dict[str, tuple] = {}
        found: dict[tuple[TableId, tuple], None] = {}
        for tbl, before, after in rows:
            if tbl not in decoders:
                info = self.describe(TableId.parse(tbl))
                key = info.primary_key if info else ()
                decoders[tbl] = (key, image_decoders(CapturedTable(info, key), keep)) if info else ((), {})
            key, decode = decoders[tbl]
            for text in (before, after):
                image = decode_image(text, decode) if text else None
                if image is not None:
                    found[(TableId.parse(tbl), tuple(image.get(c) for c in key))] = None  # before and after: once
        return list(found)

    def load_snapshot_progress(self, pipeline: str, table: str) -> SnapshotProgress | None:
        if not self._has("tiersync_snapshot"):
            return None
        rows = self._query(dialect.LOAD_SNAPSHOT_SQL, (pipeline, table))
        if not rows:
            return None
        last_key, count, done = rows[0]
        return SnapshotProgress(json.loads(last_key) if last_key else None, count, bool(done))

    def load_checkpoint(self, pipeline: str) -> str | None:
        if not self._has("tiersync_checkpoint"):
            return None
        rows = self._query(dialect.LOAD_CHECKPOINT_SQL, (pipeline,))
        return rows[0][0] if rows else None

    def store_checkpoint(self, pipeline: str, position: str) -> None:
        self.ensure_state()
        self._query(dialect.STORE_CHECKPOINT_SQL, (pipeline, position), "setting the checkpoint")

    def dead_letter_count(self, pipeline: str) -> int:
        if not self._has("tiersync_dead_letter"):
            return 0
        return self._query(dialect.DEAD_LETTER_COUNT_SQL, (pipeline,))[0][0]

    def dead_letters(self, pipeline: str, limit: int) -> list[dict]:
        if not self._has("tiersync_dead_letter"):
            return []
        rows = self._query(dialect.DEAD_LETTERS_SQL, (pipeline, limit))
        return [dict(zip(dialect.DEAD_LETTER_COLUMNS, r)) for r in rows]


class MariadbConnector(MysqlConnector):
    scheme = "mariadb"
