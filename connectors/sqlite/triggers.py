"""The DBA's view of trigger capture on SQLite: statements to review, install, status, uninstall."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime

from engine.compaction import LogRow, net_log_change
from engine.event import TableId
from engine.seams import CapturedTable, CaptureStatus, LogCompaction, TriggerCapture

from . import dialect
from .connection import connect, translate


class SqliteTriggerCapture(TriggerCapture):
    def __init__(self, url: str, consumer: str | None = None):
        self.url, self.consumer = url, consumer

    def _query(self, sql: str, params=()) -> list[tuple]:
        conn = connect(self.url)
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise translate(exc, "reading the capture state") from None
        finally:
            conn.close()

    def _installed(self) -> dict[str, set[str]]:
        installed: dict[str, set[str]] = {}
        for table, name in self._query(dialect.INSTALLED_TRIGGERS_SQL):
            installed.setdefault(table, set()).add(name)
        return installed

    def _log_exists(self) -> bool:
        return bool(self._query(dialect.TABLE_EXISTS_SQL, ("tiersync_change_log",)))

    def install_statements(self, tables: list[CapturedTable]) -> list[str]:
        statements = list(dialect.CHANGE_LOG_DDL)
        for table in tables:
            statements += dialect.trigger_ddl(table.info, table.key)
        if self.consumer:
            names = "json_array(" + ", ".join(dialect.literal(str(t.info.id)) for t in tables) + ")"
            statements.append(f"INSERT INTO tiersync_consumer (name, last_id, tables) VALUES "
                              f"({dialect.literal(self.consumer)}, 0, {names}) "
                              f"ON CONFLICT (name) DO UPDATE SET tables = excluded.tables")
        return statements

    def uninstall_statements(self, tables: list[TableId]) -> list[str]:
        statements: list[str] = []
        for table in tables:
            statements += dialect.drop_trigger_ddl(table)
        remaining = set(self._installed()) - {t.name for t in tables}
        if self.consumer and self._log_exists():
            statements.append(f"DELETE FROM tiersync_consumer WHERE name = {dialect.literal(self.consumer)}")
        if not remaining:
            statements += dialect.DROP_CHANGE_LOG_DDL
            if not self._query(dialect.TABLE_EXISTS_SQL, ("tiersync_checkpoint",)):
                statements.append("DROP TABLE IF EXISTS tiersync_apply_origin")  # not a target: not needed
        return statements

    def execute(self, statements: list[str]) -> None:
        conn = connect(self.url)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for statement in statements:
                conn.execute(statement)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            raise translate(exc, "changing capture objects") from None
        finally:
            conn.close()

    def status(self, tables: list[TableId]) -> list[CaptureStatus]:
        installed = self._installed()
        pending = {}
        if self._log_exists():
            pending = {tbl: (count, datetime.fromisoformat(oldest.replace("Z", "+00:00")))
                       for tbl, count, oldest in self._query(dialect.TABLE_PENDING_SQL)}
        return [CaptureStatus(t, len(installed.get(t.name, ())) == 3, *pending.get(str(t), (0, None)))
                for t in tables]

    def compact(self, tables: list[CapturedTable], older_than: float = 0.0) -> LogCompaction:
        figures = LogCompaction()
        if not self._log_exists():
            return figures
        keys = {str(t.info.id): t.key for t in tables}
        age = f"-{older_than} seconds"
        conn = connect(self.url)
        try:
            figures.rows_before, figures.bytes_before = conn.execute(dialect.LOG_SIZE_SQL).fetchone()
            head = conn.execute(dialect.LOG_HEAD_SQL).fetchone()[0]
            figures.purged = conn.execute(dialect.PURGE_SQL, (head,)).rowcount
            groups = [r[0] for r in conn.execute(dialect.REPEATED_KEYS_SQL, (json.dumps(list(keys)), age))]
            for start in range(0, len(groups), 1000):
                rows = conn.execute(dialect.LOG_ROWS_OF_KEYS_SQL, (json.dumps(groups[start:start + 1000]), age))
                by_key: dict[tuple, list[LogRow]] = {}
                for row_id, tbl, pk, op, before, origin in rows.fetchall():
                    moved = op == "u" and before is not None and \
                        [json.loads(before).get(c) for c in keys[tbl]] != json.loads(pk)
                    by_key.setdefault((tbl, pk), []).append(LogRow(row_id, op, before, origin, moved))
                nets = [n for n in (net_log_change(r) for r in by_key.values()) if n is not None]
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.execute(dialect.LOG_REMOVE_SQL, (json.dumps([i for n in nets for i in n.remove]),))
                    conn.executemany(dialect.LOG_REWRITE_SQL, [(n.op, n.before, n.keep) for n in nets])
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                figures.keys_compacted += len(nets)
                figures.rows_merged += sum(len(n.remove) for n in nets)
            figures.rows_after, figures.bytes_after = conn.execute(dialect.LOG_SIZE_SQL).fetchone()
        except sqlite3.Error as exc:
            raise translate(exc, "compacting the change log") from None
        finally:
            conn.close()
        return figures

