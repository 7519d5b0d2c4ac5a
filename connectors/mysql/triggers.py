"""The DBA's view of trigger capture on MySQL/MariaDB: statements to review, install, status, uninstall."""

from __future__ import annotations

import json

import pymysql

from engine.event import TableId
from engine.seams import CapturedTable, CaptureStatus, TriggerCapture

from . import dialect
from .connection import as_utc, connect, database_of
from .errors import translate


class MysqlTriggerCapture(TriggerCapture):
    def __init__(self, url: str, consumer: str | None = None):
        self.url, self.consumer = url, consumer
        self.database = database_of(url)

    def _query(self, sql: str, params=None) -> list[tuple]:
        conn = connect(self.url, autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall())
        except pymysql.Error as exc:
            raise translate(exc, "reading the capture state") from None
        finally:
            conn.close()

    def _installed(self) -> dict[str, set[str]]:
        installed: dict[str, set[str]] = {}
        for table, name in self._query(dialect.INSTALLED_TRIGGERS_SQL):
            installed.setdefault(table, set()).add(name)
        return installed

    def _has(self, table: str) -> bool:
        return bool(self._query(dialect.TABLE_EXISTS_SQL, (self.database, table))[0][0])

    def install_statements(self, tables: list[CapturedTable]) -> list[str]:
        statements = list(dialect.CHANGE_LOG_DDL)
        for table in tables:
            statements += dialect.trigger_ddl(table.info, table.key)
        if self.consumer:
            names = dialect.literal(json.dumps([str(t.info.id) for t in tables], ensure_ascii=False))
            # a consumer registered at install time keeps the purge off rows it has not read yet
            statements.append(f"INSERT INTO {dialect.CONSUMER} (name, floor_id, tables) VALUES "
                              f"({dialect.literal(self.consumer)}, 0, {names}) "
                              f"ON DUPLICATE KEY UPDATE tables = VALUES(tables)")
        return statements

    def uninstall_statements(self, tables: list[TableId]) -> list[str]:
        statements: list[str] = []
        for table in tables:
            statements += dialect.drop_trigger_ddl(table)
        remaining = set(self._installed()) - {t.name for t in tables}
        if self.consumer and self._has(dialect.CONSUMER):
            statements.append(f"DELETE FROM {dialect.CONSUMER} WHERE name = {dialect.literal(self.consumer)}")
        if not remaining:
            statements += dialect.DROP_CHANGE_LOG_DDL
        return statements

    def execute(self, statements: list[str]) -> None:
        # DDL commits implicitly in MySQL: each statement is safe to run again (IF [NOT] EXISTS, upserts)
        conn = connect(self.url, autocommit=True)
        try:
            with conn.cursor() as cur:
                for statement in statements:
                    cur.execute(statement)
        except pymysql.Error as exc:
            raise translate(exc, "changing capture objects") from None
        finally:
            conn.close()

    def status(self, tables: list[TableId]) -> list[CaptureStatus]:
        installed = self._installed()
        pending: dict[str, tuple] = {}
        if self._has(dialect.CHANGE_LOG):
            pending = {tbl: (count, as_utc(oldest)) for tbl, count, oldest in self._query(dialect.TABLE_PENDING_SQL)}
        return [CaptureStatus(t, len(installed.get(t.name, ())) == 3, *pending.get(str(t), (0, None)))
                for t in tables]
