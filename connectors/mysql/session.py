"""Writes into a MySQL/MariaDB target: multi-row upserts and batched deletes inside one transaction."""

from __future__ import annotations

import zlib

import pymysql

from engine.errors import RowRejected
from engine.jsontext import dumps_exact
from engine.schema import TableInfo
from engine.seams import DeadLetter, SnapshotProgress, TargetSession

from . import dialect
from .connection import connect
from .errors import translate
from .values import row_literal, use_tiersync_encoders, value_writer

DELETE_CHUNK = 1000  # keys per DELETE statement (and per conflict-policy read)
STATEMENT_CHARS = 1_000_000  # a multi-row statement stays well under max_allowed_packet (4 MB at the least)


class MysqlSession(TargetSession):
    def __init__(self, url: str):
        self.conn = connect(url)
        use_tiersync_encoders(self.conn)
        self.cur = self.conn.cursor()
        self._savepoints = 0
        self._origin: str | None = None
        self._marked = False
        self._marker_id = 0
        self._writers: dict = {}
        for statement in dialect.APPLY_SESSION_SQL:
            self._run(statement, what="preparing the target session")
        self.conn.commit()

    def _run(self, sql: str, params=None, what: str = "applying to the target") -> None:
        try:
            self.cur.execute(sql, params)
        except pymysql.Error as exc:
            raise translate(exc, what) from None
        except (ValueError, TypeError) as exc:  # a value no encoder can write
            raise RowRejected(f"{what}: {exc}") from None

    def _many(self, sql: str, rows: list, what: str) -> None:
        try:
            self.cur.executemany(sql, rows)
        except pymysql.Error as exc:
            raise translate(exc, what) from None
        except (ValueError, TypeError) as exc:
            raise RowRejected(f"{what}: {exc}") from None

    def begin(self) -> None:
        self._run("BEGIN", what="starting a transaction")
        self._marked = False
        if self._origin is not None:  # a user variable outlives transactions: start each one unmarked
            self._run(dialect.SET_ORIGIN_SQL, (None,))
            self._origin = None

    def commit(self) -> None:
        try:
            self.conn.commit()
        except pymysql.Error as exc:
            raise translate(exc, "committing the batch") from None

    def rollback(self) -> None:
        self._savepoints = 0
        try:
            self.conn.rollback()
        except pymysql.Error:
            pass  # the connection is gone; the server rolls the transaction back

    def lock_pipeline(self, pipeline: str) -> None:
        self._marker_id = zlib.crc32(pipeline.encode()) % 2**31
        self._run(dialect.LOCK_PIPELINE_SQL, (pipeline,), "taking the pipeline's apply lock")

    def savepoint(self) -> None:
        self._savepoints += 1
        self._run(f"SAVEPOINT tiersync_{self._savepoints}")

    def rollback_to_savepoint(self) -> None:
        self._run(f"ROLLBACK TO SAVEPOINT tiersync_{self._savepoints}")
        self._marked = False  # the marker row may have been written after the savepoint

    def release_savepoint(self) -> None:
        self._run(f"RELEASE SAVEPOINT tiersync_{self._savepoints}")
        self._savepoints -= 1

    def set_origin(self, origin: str | None) -> None:
        if origin != self._origin:
            self._run(dialect.SET_ORIGIN_SQL, (origin,))  # read by this database's capture triggers
            self._origin = origin
        if origin and not self._marked:  # read by binlog capture: a target transaction carries one origin
            self._run(dialect.MARK_ORIGIN_SQL, (self._marker_id, origin), "marking the transaction's origin")
            self._marked = True

    def _prepared(self, table: TableInfo, columns: list[str], rows: list[tuple]) -> list:
        """Rows with each column's checks applied (decimal scale, time precision, JSON text)."""
        cache_key = (table.id, tuple(columns))
        writers = self._writers.get(cache_key)
        if writers is None:
            writers = []
            for i, name in enumerate(columns):
                info = table.column(name)
                writer = value_writer(info.type) if info else None
                if writer is not None:
                    writers.append((i, writer))
            self._writers[cache_key] = writers
        if not writers:
            return rows
        prepared = []
        try:
            for row in rows:
                row = list(row)
                for i, write in writers:
                    if row[i] is not None:
                        row[i] = write(row[i])
                prepared.append(row)
        except (ValueError, TypeError, ArithmeticError) as exc:
            raise RowRejected(f"value cannot be written to {table.id}: {exc}") from None
        return prepared

    def _multi_row(self, head: str, tail: str, rows: list, what: str) -> None:
        """``head`` VALUES (…), (…) ``tail``, in statements of at most STATEMENT_CHARS characters."""
        try:
            literals = [row_literal(row) for row in rows]
        except (ValueError, TypeError, ArithmeticError) as exc:
            raise RowRejected(f"{what}: {exc}") from None
        start, size = 0, 0
        for i, text in enumerate(literals):
            size += len(text) + 1
            if size > STATEMENT_CHARS and i > start:
                self._run(head + ",".join(literals[start:i]) + tail, what=what)
                start, size = i, len(text) + 1
        if start < len(literals):
            self._run(head + ",".join(literals[start:]) + tail, what=what)

    def upsert(self, table: TableInfo, columns: list[str], key: list[str], rows: list[tuple]) -> None:
        head, tail = dialect.upsert_sql_parts(table.id, columns, key)
        self._multi_row(head, tail, self._prepared(table, columns, rows), f"upserting into {table.id}")

    def insert(self, table: TableInfo, columns: list[str], rows: list[tuple]) -> None:
        head = dialect.insert_sql_head(table.id, columns)
        self._multi_row(head, "", self._prepared(table, columns, rows), f"inserting into {table.id}")

    def delete(self, table: TableInfo, key: list[str], keys: list[tuple]) -> None:
        keys = self._prepared(table, key, keys)
        for start in range(0, len(keys), DELETE_CHUNK):
            part = keys[start:start + DELETE_CHUNK]
            params = [v for k in part for v in k]
            self._run(dialect.delete_sql(table.id, key, len(part)), params, f"deleting from {table.id}")

    def current_rows(self, table: TableInfo, key: list[str], columns: list[str], keys: list[tuple]) -> list[tuple]:
        keys = self._prepared(table, key, keys)
        rows: list[tuple] = []
        for start in range(0, len(keys), DELETE_CHUNK):
            part = keys[start:start + DELETE_CHUNK]
            self._run(dialect.current_rows_sql(table.id, key, columns, len(part)), [v for k in part for v in k],
                      f"reading {table.id}")
            rows += self.cur.fetchall()
        return rows

    def truncate(self, table: TableInfo) -> None:
        self._run(dialect.truncate_sql(table.id), what=f"truncating {table.id}")

    def save_checkpoint(self, pipeline: str, position: str, changes: int) -> None:
        self._run(dialect.SAVE_CHECKPOINT_SQL, (pipeline, position, changes), "saving the checkpoint")

    def save_dead_letters(self, letters: list[DeadLetter]) -> None:
        rows = [(d.pipeline, d.source_table, d.target_table, d.op, dumps_exact(d.key), d.error, dumps_exact(d.event),
                 d.position) for d in letters]
        self._many(dialect.DEAD_LETTER_SQL, rows, "writing dead letters")

    def save_snapshot_progress(self, pipeline: str, table: str, progress: SnapshotProgress) -> None:
        key = None if progress.last_key is None else dumps_exact(progress.last_key)
        self._run(dialect.SAVE_SNAPSHOT_SQL, (pipeline, table, key, progress.rows, progress.done),
                  "saving snapshot progress")

    def close(self) -> None:
        try:
            self.conn.close()
        except pymysql.Error:
            pass
