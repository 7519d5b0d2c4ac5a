"""Set-based writes into a PostgreSQL target: COPY into a staging table, then one statement per group."""

from __future__ import annotations

import logging

import psycopg
from psycopg.types.json import Jsonb

from engine.encoded import EncodedRow
from engine.errors import RowRejected
from engine.jsontext import dumps_exact
from engine.schema import TableInfo
from engine.seams import DeadLetter, SnapshotProgress, TargetSession

from . import dialect
from .connection import connect
from .copytext import COPY_TEXT
from .errors import translate
from .origins import MESSAGE_PREFIX, MESSAGES_SINCE, legacy_prefix, origin_name, per_node_origin_name

log = logging.getLogger(__name__)
DIRECT_COPY_SKIPS = 20  # after a plain COPY of new rows met an existing one, upsert this many groups directly


class PostgresSession(TargetSession):
    """One connection to the target; staging tables live as long as it does.

    Takes encoded rows in COPY text format (see :mod:`connectors.postgres.copytext`)."""

    encoded_format = COPY_TEXT

    def __init__(self, url: str, schema: str):
        self.schema = schema
        self.conn = connect(url, application="tiersync-apply")
        self.cur = self.conn.cursor()
        self._stages: set[str] = set()
        self._created_in_txn: set[str] = set()
        self._used_in_txn: set[str] = set()
        self._maybe_filled: set[str] = set()  # forgotten at a rollback to a savepoint, possibly still holding rows
        self._savepoints = 0
        self._origin: str | None = None
        self._json_columns: dict = {}
        self._direct_skips: dict = {}  # table → upsert_new calls left that upsert without trying a plain COPY
        self._url = url
        self._pipeline = ""
        self._session_origin: str | None = None
        self._known_origins: set[str] = set()
        self._busy_origins: set[str] = set()  # held by another session of the pipeline
        try:
            for statement in dialect.APPLY_SESSION_SQL:
                self.cur.execute(statement)
            self.cur.execute(dialect.CAN_USE_ORIGINS_SQL)
            self._replication_origins = bool(self.cur.fetchone()[0])
            self.cur.execute(dialect.ORIGIN_MESSAGES_SQL)
            version, logical, may_emit = self.cur.fetchone()
            self.conn.commit()
        except psycopg.Error as exc:
            raise translate(exc, "preparing the target session") from None
        # without messages (before PostgreSQL 14, or not granted) each origin node needs an origin of its own
        self._messages = logical and may_emit and version >= MESSAGES_SINCE
        self._per_node_origins = version < MESSAGES_SINCE or not may_emit
        if logical and not self._messages:
            log.info("changes applied here are marked for log-based capture by one replication origin per origin "
                     "node (%s): PostgreSQL 14 and EXECUTE on pg_logical_emit_message need one per pipeline",
                     "granted" if self._replication_origins else "not granted either: trigger capture only")

    def _run(self, sql: str, params=None, what: str = "applying to the target") -> None:
        try:
            self.cur.execute(sql, params)
        except psycopg.Error as exc:
            raise translate(exc, what) from None

    def begin(self) -> None:
        self._created_in_txn.clear()
        self._used_in_txn.clear()
        self._maybe_filled.clear()
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
        self._maybe_filled |= self._created_in_txn  # or it was created before the savepoint and holds rows

    def release_savepoint(self) -> None:
        self._run(f"RELEASE SAVEPOINT tiersync_{self._savepoints}")
        self._savepoints -= 1

    def set_origin(self, origin: str | None) -> None:
        """Mark the rows that follow as ``origin``'s: for capture triggers (a transaction-local setting) and
        for log-based capture (a transactional origin message, and the pipeline's replication origin)."""
        if origin != self._origin:
            self._run(dialect.set_origin_sql(), (origin or "",))
            if self._messages:
                self._run(dialect.EMIT_ORIGIN_MESSAGE_SQL, (MESSAGE_PREFIX, origin or ""), "marking the rows' origin")
            self._origin = origin
        if self._replication_origins:
            self._set_replication_origin(origin)

    def _set_replication_origin(self, origin: str | None) -> None:
        # PostgreSQL 15 lets only one session at a time use an origin: one per applying pipeline
        if self._per_node_origins:
            wanted = per_node_origin_name(self._pipeline, origin) if origin else None
        else:  # kept for the session: its messages say whose rows follow
            wanted = origin_name(self._pipeline) if origin or self._session_origin else None
            if wanted in self._busy_origins:
                return
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
                if not self._per_node_origins:
                    _drop_legacy_origins(admin, self._pipeline)
            self._known_origins.add(wanted)
        if self._session_origin is not None:
            self._run(dialect.RESET_ORIGIN_SQL)  # session state, not transactional
            self._session_origin = None
        if wanted is not None and self._per_node_origins:
            self._run(dialect.SETUP_ORIGIN_SQL, (wanted,))
            self._session_origin = wanted
        elif wanted is not None and self._take_shared_origin(wanted):
            self._session_origin = wanted

    def _take_shared_origin(self, name: str) -> bool:
        """Set up the pipeline's origin, unless another session of the pipeline holds it (a snapshot beside
        the stream): then this session goes without; its origin messages attribute its rows all the same."""
        try:
            self.cur.execute("SAVEPOINT tiersync_origin")  # the batch's transaction survives a refusal
            try:
                self.cur.execute(dialect.SETUP_ORIGIN_SQL, (name,))
                taken = True
            except psycopg.errors.ObjectInUse as exc:
                self.cur.execute("ROLLBACK TO SAVEPOINT tiersync_origin")
                self._busy_origins.add(name)
                log.info("this session marks its rows with origin messages only: %s", str(exc).strip())
                taken = False
            self.cur.execute("RELEASE SAVEPOINT tiersync_origin")
        except psycopg.Error as exc:
            raise translate(exc, f"setting up replication origin {name}") from None
        return taken

    def _stage(self, table: TableInfo, columns: list[str], rows: list[tuple]) -> str:
        stage = dialect.stage_name(table.id, tuple(columns))
        if stage not in self._stages:
            self._run(dialect.create_stage_sql(stage, table.id, columns), what=f"preparing to write {table.id}")
            self._stages.add(stage)
            self._created_in_txn.add(stage)
            if stage in self._maybe_filled:  # rows staged before the savepoint must not be written again
                self._run(f"DELETE FROM {dialect.quote(stage)}")
                self._maybe_filled.discard(stage)
        elif stage in self._used_in_txn:
            self._run(f"DELETE FROM {dialect.quote(stage)}")
        self._used_in_txn.add(stage)
        self._copy(dialect.copy_sql(stage, columns), table, columns, rows)
        return stage

    def _copy(self, copy_sql: str, table: TableInfo, columns: list[str], rows: list) -> None:
        """Run ``copy_sql`` (a COPY … FROM STDIN) with ``rows``: tuples, or encoded rows written as they are."""
        json_positions = [i for i, c in enumerate(columns) if self._is_json(table, c)]
        try:
            with self.cur.copy(copy_sql) as copy:
                if rows and type(rows[0]) is EncodedRow:  # lines in COPY text format already
                    copy.write(b"\n".join([row.line for row in rows]) + b"\n")
                elif json_positions:
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

    def current_rows(self, table: TableInfo, key: list[str], columns: list[str], keys: list[tuple]) -> list[tuple]:
        self._run(dialect.lock_writers_sql(table.id), what=f"locking {table.id} against other writers")
        rows: list[tuple] = []
        for start in range(0, len(keys), dialect.KEYS_PER_READ):
            part = keys[start:start + dialect.KEYS_PER_READ]
            self._run(dialect.current_rows_sql(table.id, key, columns, len(part)), [v for k in part for v in k],
                      f"reading {table.id}")
            rows += self.cur.fetchall()
        return rows

    def upsert_new(self, table: TableInfo, columns: list[str], key: list[str], rows: list[tuple]) -> None:
        """COPY straight into the table inside a savepoint; if a row is refused (it is there already, say after
        a replay), roll that back and upsert them all. After a refusal the next groups of the table skip the try."""
        skips = self._direct_skips.get(table.id, 0)
        if skips:
            self._direct_skips[table.id] = skips - 1
            return self.upsert(table, columns, key, rows)
        origin = self._origin
        self.savepoint()
        try:
            self._copy(dialect.copy_into_sql(table.id, columns), table, columns, rows)
        except RowRejected:
            self.rollback_to_savepoint()
            self.release_savepoint()
            self._direct_skips[table.id] = DIRECT_COPY_SKIPS
            self.set_origin(origin)  # rolled back with the savepoint
            self.upsert(table, columns, key, rows)
            return
        self.release_savepoint()

    def insert(self, table: TableInfo, columns: list[str], rows: list[tuple]) -> None:
        self._copy(dialect.copy_into_sql(table.id, columns), table, columns, rows)  # as INSERT … SELECT would

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


def _drop_legacy_origins(admin: psycopg.Connection, pipeline: str) -> None:
    """Drop the per-node origins earlier versions made for ``pipeline``, once no logical slot can still
    decode a transaction marked with one (each slot confirmed past its last commit). Best effort."""
    try:
        names = [r[0] for r in admin.execute(dialect.DROPPABLE_LEGACY_ORIGINS_SQL, (legacy_prefix(pipeline),))]
        for name in names:
            admin.execute(dialect.DROP_ORIGIN_SQL, (name,))
    except psycopg.Error as exc:  # no privilege, or an older tiersync still uses one: they only cost slots
        log.info("per-node replication origins of pipeline %s are kept for now: %s", pipeline,
                 str(exc).strip().splitlines()[0])
        return
    if names:
        log.info("dropped %d per-node replication origin(s) of pipeline %s: one per pipeline is used now",
                 len(names), pipeline)
