"""The DBA's view of trigger capture on PostgreSQL: statements to review, install, status, uninstall."""

from __future__ import annotations

import psycopg

from engine.compaction import LogRow, net_log_change
from engine.event import TableId
from engine.seams import CapturedTable, CaptureStatus, LogCompaction, TriggerCapture

from . import dialect
from .connection import connect, parse_image
from .errors import translate
from .position import NOTHING_VISIBLE


class PostgresTriggerCapture(TriggerCapture):
    def __init__(self, url: str, schema: str, consumer: str | None = None):
        self.url, self.schema, self.consumer = url, schema, consumer

    def _query(self, sql: str, params=None) -> list[tuple]:
        with connect(self.url, autocommit=True) as conn:
            try:
                return conn.execute(sql, params).fetchall()
            except psycopg.Error as exc:
                raise translate(exc, "reading the capture state") from None

    def _installed(self) -> set[TableId]:
        return {TableId(s, n) for s, n in self._query(dialect.INSTALLED_TRIGGERS_SQL)}

    def _log_exists(self) -> bool:
        rel = f"{dialect.quote(self.schema)}.tiersync_change_log"
        return bool(self._query(dialect.TABLE_EXISTS_SQL, {"rel": rel})[0][0])

    def install_statements(self, tables: list[CapturedTable]) -> list[str]:
        statements = dialect.change_log_ddl(self.schema)
        for table in tables:
            statements += dialect.trigger_ddl(self.schema, table.info, table.key)
        if self.consumer:
            names = "ARRAY[" + ", ".join(dialect.literal(str(t.info.id)) for t in tables) + "]::text[]"
            # a consumer registered at install time keeps other pipelines' purges off its rows
            statements.append(
                f"INSERT INTO {dialect.quote(self.schema)}.tiersync_consumer (name, prev, cur, last_id, tables) "
                f"VALUES ({dialect.literal(self.consumer)}, '{NOTHING_VISIBLE}', '{NOTHING_VISIBLE}', 0, {names}) "
                f"ON CONFLICT (name) DO UPDATE SET tables = EXCLUDED.tables")
        return statements

    def uninstall_statements(self, tables: list[TableId]) -> list[str]:
        installed = self._installed()
        statements: list[str] = []
        for table in tables:
            exists = bool(self._query(dialect.TABLE_EXISTS_SQL, {"rel": dialect.qualified(table)})[0][0])
            statements += dialect.drop_trigger_ddl(self.schema, table, exists and table in installed)
        if self.consumer and self._log_exists():
            statements.append(f"DELETE FROM {dialect.quote(self.schema)}.tiersync_consumer "
                              f"WHERE name = {dialect.literal(self.consumer)}")
        if not (installed - set(tables)):  # no captured table left: the change log goes too
            statements += dialect.drop_change_log_ddl(self.schema)
        return statements

    def execute(self, statements: list[str]) -> None:
        with connect(self.url) as conn:
            try:
                for statement in statements:
                    conn.execute(statement)
                conn.commit()
            except psycopg.Error as exc:
                raise translate(exc, "changing capture objects") from None

    def status(self, tables: list[TableId]) -> list[CaptureStatus]:
        installed = self._installed()
        pending: dict[str, tuple] = {}
        if self._log_exists():
            rows = self._query(dialect.table_pending_sql(self.schema), {"tables": [str(t) for t in tables]})
            pending = {tbl: (count, oldest) for tbl, count, oldest in rows}
        return [CaptureStatus(t, t in installed, *pending.get(str(t), (0, None))) for t in tables]

    def compact(self, tables: list[CapturedTable], older_than: float = 0.0) -> LogCompaction:
        figures = LogCompaction()
        if not self._log_exists():
            return figures
        keys = {str(t.info.id): t.key for t in tables}
        with connect(self.url, autocommit=True, application="tiersync-compact") as conn:
            try:
                figures.rows_before, figures.bytes_before = conn.execute(dialect.log_size_sql(self.schema)).fetchone()
                figures.purged = conn.execute(dialect.purge_sweep_sql(self.schema)).rowcount
                groups = [r[0] for r in conn.execute(dialect.repeated_keys_sql(self.schema),
                                                     {"tables": list(keys), "age": older_than})]
                for start in range(0, len(groups), 1000):
                    part = groups[start:start + 1000]
                    rows = conn.execute(dialect.log_rows_of_keys_sql(self.schema),
                                        {"groups": part, "age": older_than}).fetchall()
                    by_key: dict[tuple, list[LogRow]] = {}
                    for row_id, tbl, pk, op, before, origin in rows:
                        moved = op == "u" and before is not None and \
                            [parse_image(before).get(c) for c in keys[tbl]] != parse_image(pk)
                        by_key.setdefault((tbl, pk), []).append(LogRow(row_id, op, before, origin, moved))
                    nets = [n for n in (net_log_change(r) for r in by_key.values()) if n is not None]
                    with conn.transaction():
                        conn.execute(dialect.log_remove_sql(self.schema), ([i for n in nets for i in n.remove],))
                        with conn.cursor() as cur:
                            cur.executemany(dialect.log_rewrite_sql(self.schema),
                                            [(n.op, n.before, n.keep) for n in nets])
                    figures.keys_compacted += len(nets)
                    figures.rows_merged += sum(len(n.remove) for n in nets)
                figures.rows_after, figures.bytes_after = conn.execute(dialect.log_size_sql(self.schema)).fetchone()
            except psycopg.Error as exc:
                raise translate(exc, "compacting the change log") from None
        return figures

