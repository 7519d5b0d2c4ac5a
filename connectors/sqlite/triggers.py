"""The DBA's view of trigger capture on SQLite: statements to review, install, status, uninstall."""

from __future__ import annotations

import sqlite3
from datetime import datetime

from engine.event import TableId
from engine.seams import CapturedTable, CaptureStatus, TriggerCapture

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
