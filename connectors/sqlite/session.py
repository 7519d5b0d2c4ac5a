"""Writes into a SQLite target: multi-row statements inside one transaction."""

from __future__ import annotations

import sqlite3

from engine.jsontext import dumps_exact
from engine.schema import TableInfo
from engine.seams import DeadLetter, SnapshotProgress, TargetSession

from . import dialect
from .connection import connect, translate


class SqliteSession(TargetSession):
    def __init__(self, url: str):
        self.conn = connect(url)
        self._savepoints = 0
        self._origin: str | None = None

    def _run(self, sql: str, params=(), what: str = "applying to the target"):
        try:
            return self.conn.execute(sql, params)
        except sqlite3.Error as exc:
            raise translate(exc, what) from None

    def _many(self, sql: str, rows: list[tuple], what: str) -> None:
        try:
            self.conn.executemany(sql, rows)
        except (sqlite3.Error, OverflowError) as exc:
            raise translate(exc, what) from None

    def begin(self) -> None:
        self._run("BEGIN IMMEDIATE")
        self._origin = None

    def commit(self) -> None:
        self._run("DELETE FROM tiersync_apply_origin")
        self._run("COMMIT")

    def rollback(self) -> None:
        self._savepoints = 0
        try:
            self.conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def lock_pipeline(self, pipeline: str) -> None:
        pass  # BEGIN IMMEDIATE already holds SQLite's single write lock

    def savepoint(self) -> None:
        self._savepoints += 1
        self._run(f"SAVEPOINT tiersync_{self._savepoints}")

    def rollback_to_savepoint(self) -> None:
        self._run(f"ROLLBACK TO tiersync_{self._savepoints}")
        self._origin = "\0unknown"

    def release_savepoint(self) -> None:
        self._run(f"RELEASE tiersync_{self._savepoints}")
        self._savepoints -= 1

    def set_origin(self, origin: str | None) -> None:
        if origin != self._origin:
            self._run("DELETE FROM tiersync_apply_origin")
            if origin:
                self._run("INSERT INTO tiersync_apply_origin (origin) VALUES (?)", (origin,))
            self._origin = origin

    def upsert(self, table: TableInfo, columns: list[str], key: list[str], rows: list[tuple]) -> None:
        self._many(dialect.upsert_sql(table.id, columns, key), rows, f"upserting into {table.id}")

    def insert(self, table: TableInfo, columns: list[str], rows: list[tuple]) -> None:
        self._many(dialect.insert_sql(table.id, columns), rows, f"inserting into {table.id}")

    def delete(self, table: TableInfo, key: list[str], keys: list[tuple]) -> None:
        self._many(dialect.delete_sql(table.id, key), keys, f"deleting from {table.id}")

    def current_rows(self, table: TableInfo, key: list[str], columns: list[str], keys: list[tuple]) -> list[tuple]:
        per_read = max(1, dialect.KEY_VALUES_PER_READ // len(key))
        rows: list[tuple] = []
        for start in range(0, len(keys), per_read):
            part = keys[start:start + per_read]
            cursor = self._run(dialect.current_rows_sql(table.id, key, columns, len(part)),
                               [v for k in part for v in k], f"reading {table.id}")
            rows += cursor.fetchall()
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
        self._run(dialect.SAVE_SNAPSHOT_SQL, (pipeline, table, key, progress.rows, int(progress.done)),
                  "saving snapshot progress")

    def close(self) -> None:
        self.conn.close()

