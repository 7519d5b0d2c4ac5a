"""Set-based writes into a PostgreSQL target: COPY into a staging table, then one statement per group."""

from __future__ import annotations

import logging

import psycopg
from psycopg.types.json import Jsonb

from engine.errors import RowRejected
from engine.jsontext import dumps_exact
from engine.schema import TableInfo
from engine.seams import DeadLetter, SnapshotProgress, TargetSession

from . import dialect
from .connection import connect
from .errors import translate
from .logical_reader import origin_name

log = logging.getLogger(__name__)


class PostgresSession(TargetSession):
    """One connection to the target; staging tables live as long as it does."""

    def __init__(self, url: str, schema: str):
        self.schema = schema
        self.conn = connect(url, application="tiersync-apply")
        self.cur = self.conn.cursor()
        self._stages: set[str] = set()
        self._created_in_txn: set[str] = set()
        self._used_in_txn: set[str] = set()
        self._savepoints = 0
        self._origin: str | None = None
        self._json_columns: dict = {}
        self._url = url
        self._pipeline = ""
        self._session_origin: str | None = None
        self._known_origins: set[str] = set()
        try:
            for statement in dialect.APPLY_SESSION_SQL:
                self.cur.execute(statement)
            self.cur.execute(dialect.CAN_USE_ORIGINS_SQL)
            self._replication_origins = bool(self.cur.fetchone()[0])
            if not self._replication_origins:
                log.info("the target's user may not set replication origins: changes applied here are "
                         "marked for trigger capture only (grant EXECUTE on pg_replication_origin_* to fix)")
            self.conn.commit()
        except psycopg.Error as exc:
            raise translate(exc, "preparing the target session") from None

    def _run(self, sql: str, params=None, what: str = "applying to the target") -> None:
        try:
            self.cur.execute(sql, params)
        except psycopg.Error as exc:
            raise translate(exc, what) from None

    def begin(self) -> None:
        self._created_in_txn.clear()
        self._used_in_txn.clear()
        self._origin = None

    def commit(self) -> None:
        try:
            self.conn.commit()
        except psycopg.Error as exc:
            raise translate(exc, "committing the batch") from None

    def rollback(self) -> None:
        self._stages -= self._created_in_txn
        self._created_in_txn.clear()
        self._savepoints = 0
        try:
            self.conn.rollback()
        except psycopg.Error:
            pass  # the connection is gone; the transaction is rolled back with it

    def lock_pipeline(self, pipeline: str) -> None:
        self._pipeline = pipeline
        self._run(dialect.LOCK_PIPELINE_SQL, (pipeline,))

    def savepoint(self) -> None:
        self._savepoints += 1
        self._run(f"SAVEPOINT tiersync_{self._savepoints}")

    def rollback_to_savepoint(self) -> None:
        self._run(f"ROLLBACK TO SAVEPOINT tiersync_{self._savepoints}")
        self._origin = "\0unknown"  # set_config was rolled back too
        self._stages -= self._created_in_txn  # so may a staging table be (CREATE … IF NOT EXISTS runs again)

    def release_savepoint(self) -> None:
        self._run(f"RELEASE SAVEPOINT tiersync_{self._savepoints}")
        self._savepoints -= 1

    def set_origin(self, origin: str | None) -> None:
        if origin != self._origin:
            self._run(dialect.set_origin_sql(), (origin or "",))  # read by capture triggers
            self._origin = origin
        if self._replication_origins:  # read by logical decoding (an Origin message per transaction)
            self._set_replication_origin(origin)

    def _set_replication_origin(self, origin: str | None) -> None:
        # one name per applying pipeline: PostgreSQL 15 lets only one session at a time use an origin
        wanted = origin_name(self._pipeline, origin) if origin else None
        if wanted == self._session_origin:
            return
        if wanted is not None and wanted not in self._known_origins:
            # created on a separate connection: creating it in the batch's transaction would undo it on rollback
            with connect(self._url, autocommit=True) as admin:
                try:
                    admin.execute(dialect.CREATE_ORIGIN_SQL, (wanted, wanted))
                except psycopg.errors.UniqueViolation:
                    pass  # another session created it just now
                except psycopg.Error as exc:
                    raise translate(exc, f"creating replication origin {wanted}") from None
            self._known_origins.add(wanted)
        if self._session_origin is not None:
            self._run(dialect.RESET_ORIGIN_SQL)  # session state, not transactional
            self._session_origin = None
        if wanted is not None:
            self._run(dialect.SETUP_ORIGIN_SQL, (wanted,))
            self._session_origin = wanted

    def _stage(self, table: TableInfo, columns: list[str], rows: list[tuple]) -> str:
        stage = dialect.stage_name(table.id, tuple(columns))
        if stage not in self._stages:
            self._run(dialect.create_stage_sql(stage, table.id, columns), what=f"preparing to write {table.id}")
            self._stages.add(stage)
            self._created_in_txn.add(stage)
        elif stage in self._used_in_txn:
            self._run(f"DELETE FROM {dialect.quote(stage)}")
        self._used_in_txn.add(stage)
        json_positions = [i for i, c in enumerate(columns) if self._is_json(table, c)]
        try:
            with self.cur.copy(dialect.copy_sql(stage, columns)) as copy:
                if json_positions:
                    for row in rows:
                        row = list(row)
                        for i in json_positions:
                            if row[i] is not None:
                                row[i] = Jsonb(row[i], dumps=dumps_exact)
                        copy.write_row(row)
                else:
                    for row in rows:
                        copy.write_row(row)
        except psycopg.Error as exc:
            raise translate(exc, f"writing {table.id}") from None
        except (TypeError, ValueError) as exc:  # a value psycopg cannot adapt
            raise RowRejected(f"value cannot be written to {table.id}: {exc}") from None
        return stage

    def _is_json(self, table: TableInfo, column: str) -> bool:
        known = self._json_columns.get((table.id, column))
        if known is None:
            info = table.column(column)
            known = bool(info and dialect.is_json_type(info.type))
            self._json_columns[(table.id, column)] = known
        return known

    def upsert(self, table: TableInfo, columns: list[str], key: list[str], rows: list[tuple]) -> None:
        stage = self._stage(table, columns, rows)
        self._run(dialect.upsert_from_stage_sql(stage, table.id, columns, key), what=f"upserting into {table.id}")

    def upsert_newer(self, table: TableInfo, columns: list[str], key: list[str], rows: list[tuple],
                     time_column: str) -> None:
        stage = self._stage(table, columns, rows)
        self._run(dialect.upsert_newer_from_stage_sql(stage, table.id, columns, key, time_column),
                  what=f"upserting into {table.id}")

    def insert(self, table: TableInfo, columns: list[str], rows: list[tuple]) -> None:
        stage = self._stage(table, columns, rows)
        self._run(dialect.insert_from_stage_sql(stage, table.id, columns), what=f"inserting into {table.id}")

    def delete(self, table: TableInfo, key: list[str], keys: list[tuple]) -> None:
        stage = self._stage(table, key, keys)
        self._run(dialect.delete_from_stage_sql(stage, table.id, key), what=f"deleting from {table.id}")

    def truncate(self, table: TableInfo) -> None:
        self._run(dialect.truncate_sql(table.id), what=f"truncating {table.id}")

    def save_checkpoint(self, pipeline: str, position: str, changes: int) -> None:
        self._run(dialect.save_checkpoint_sql(self.schema), (pipeline, position, changes), "saving the checkpoint")

    def save_dead_letters(self, letters: list[DeadLetter]) -> None:
        rows = [(d.pipeline, d.source_table, d.target_table, d.op, Jsonb(d.key, dumps=dumps_exact), d.error,
                 Jsonb(d.event, dumps=dumps_exact), d.position) for d in letters]
        try:
            self.cur.executemany(dialect.dead_letter_insert_sql(self.schema), rows)
        except psycopg.Error as exc:
            raise translate(exc, "writing dead letters") from None

    def save_snapshot_progress(self, pipeline: str, table: str, progress: SnapshotProgress) -> None:
        key = None if progress.last_key is None else Jsonb(progress.last_key, dumps=dumps_exact)
        self._run(dialect.save_snapshot_sql(self.schema), (pipeline, table, key, progress.rows, progress.done),
                  "saving snapshot progress")

    def close(self) -> None:
        self.conn.close()
