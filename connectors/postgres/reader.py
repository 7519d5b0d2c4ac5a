"""Reads the PostgreSQL trigger change log in commit-safe order (see :mod:`.position`)."""

from __future__ import annotations

import logging
import time

import psycopg

from engine.event import ChangeEvent, Op
from engine.seams import CapturedTable, ReadBatch, Reader, same_origin_prefix

from . import dialect
from .connection import connect
from .errors import translate
from .position import PostgresLogPosition
from .scanner import decode_image, image_decoders

log = logging.getLogger(__name__)

_OPS = {"c": Op.CREATE, "u": Op.UPDATE, "d": Op.DELETE}
SWEEP_INTERVAL = 300.0  # seconds between full purges of rows no batch window covered


class PostgresChangeLogReader(Reader):
    """One consumer's view of the change log: reads ranges of finished transactions, purges on acknowledge.

    A batch holds rows of one snapshot window (the transactions that committed between two snapshots) in id
    order, and ends at a change of transaction id, so the target commits whole source transactions; one
    transaction larger than a batch is handed over in parts (``more``) applied in one target transaction —
    unless ``split_transactions`` allows otherwise, or the origin changes (one target transaction carries
    one origin). Transactions that ran at the same time interleave in id order, so a batch boundary can
    still fall inside one of them; the final state is exact either way.
    """

    def __init__(self, url: str, schema: str, consumer: str, tables: list[CapturedTable],
                 start: str | None, node_id: str, split_transactions: bool = False):
        self.url, self.schema, self.consumer, self.node_id = url, schema, consumer, node_id
        self.split = split_transactions
        self._open_from: int | None = None  # first change-log id of a window handed over in parts
        self.tables = {str(t.info.id): t for t in tables}
        self.table_names = list(self.tables)
        self.decoders = {name: image_decoders(t) for name, t in self.tables.items()}
        self.table_ids = {name: t.info.id for name, t in self.tables.items()}
        self.keys = {name: t.key for name, t in self.tables.items()}  # the log's pk column is for people
        self.position = PostgresLogPosition.deserialise(start) if start else PostgresLogPosition()
        self.conn = connect(url, autocommit=True, application="tiersync-reader")
        self.database = self.conn.info.dbname
        for statement in dialect.READER_SESSION_SQL:
            self._execute(statement)
        self._windows: dict[str, int] = {}  # position handed out → first change-log id of its batch
        self._last_sweep = 0.0  # sweep on the first acknowledgement: windows of a crashed run are lost
        self._swept_since_ack = True
        self._ack_conn = None
        self._register()

    def _execute(self, sql: str, params: dict | None = None, what: str = "reading the change log"):
        try:
            return self.conn.execute(sql, params)
        except psycopg.Error as exc:
            raise translate(exc, what) from None

    def _params(self, position: PostgresLogPosition) -> dict:
        return {"prev": position.prev, "cur": position.cur, "last_id": position.last_id, "name": self.consumer,
                "tables": self.table_names}

    def _register(self) -> None:
        self._execute(dialect.register_consumer_sql(self.schema), self._params(self.position),
                      "registering the consumer")

    def read(self, max_events: int) -> ReadBatch:
        position = self.position
        for _ in range(2):  # at most: finish the current batch, then open the next one
            fetched = self._execute(dialect.read_sql(self.schema),
                                    dict(self._params(position), limit=max_events + 1)).fetchall()
            rows, more = self._cut(fetched, max_events)
            if rows:
                events = [self._event(row) for row in rows]
                position = PostgresLogPosition(position.prev, position.cur, rows[-1][0])
                self.position = position
                serialised = position.serialise()
                first_id = rows[0][0] if self._open_from is None else self._open_from
                self._open_from = first_id if more else None
                if not more:
                    self._windows[serialised] = first_id
                return ReadBatch(events, serialised, more=more)
            if self._open_from is not None:  # a transaction handed over in parts ended with its last part
                serialised = position.serialise()
                self._windows[serialised], self._open_from = self._open_from, None
                return ReadBatch([], serialised, ends_transaction=True)
            snapshot = self._execute(dialect.SNAPSHOT_SQL).fetchone()[0]
            if snapshot == position.cur:
                if not self._swept_since_ack:  # idle: a good moment to clear what windows missed
                    try:
                        self._sweep(self.conn)
                    except psycopg.Error as exc:
                        raise translate(exc, "purging the change log") from None
                break
            position = PostgresLogPosition(position.cur, snapshot, 0)
            self.position = position
        return ReadBatch([], position.serialise())

    def _cut(self, fetched: list, limit: int) -> tuple[list, bool]:
        """Where this batch ends, and whether it leaves a source transaction open (``more``).

        ``fetched`` holds up to ``limit`` + 1 rows: the extra row tells whether the last transaction goes on.
        A batch ends where the origin changes (one target transaction carries one origin), else at the last
        change of transaction id; a single transaction larger than a batch is handed over in parts.
        """
        rows = same_origin_prefix(fetched[:limit], 6)
        if len(rows) < limit or len(fetched) <= limit or self.split:
            return rows, False  # the origin changes, the window has nothing more, or parts may commit alone
        following = fetched[limit][1]
        for i in range(len(rows) - 1, -1, -1):
            if rows[i][1] != (following if i == len(rows) - 1 else rows[i + 1][1]):
                return rows[:i + 1], False
        return rows, True  # one transaction fills the batch and goes on

    def _event(self, row) -> ChangeEvent:
        row_id, txid, tbl, op, before, after, origin, captured_at = row
        decoders = self.decoders[tbl]
        before, after = decode_image(before, decoders), decode_image(after, decoders)
        image = after if after is not None else before
        return ChangeEvent(
            op=_OPS[op], table=self.table_ids[tbl], key=tuple(image.get(c) for c in self.keys[tbl]),
            before=before, after=after, seq=row_id, txid=txid,
            origin=origin or self.node_id, captured_at=captured_at, source_node=self.node_id,
            source_database=self.database)

    def acknowledge(self, position: str) -> None:
        """The target has committed everything up to ``position``: record it and purge what all consumers have.

        Runs on its own connection, so the next batch can be read meanwhile.
        """
        pos = PostgresLogPosition.deserialise(position)
        params = self._params(pos)
        if self._ack_conn is None:
            self._ack_conn = connect(self.url, autocommit=True, application="tiersync-ack")
            for statement in dialect.ACK_SESSION_SQL:
                self._ack_conn.execute(statement)
        first_id = self._windows.pop(position, None)
        try:
            with self._ack_conn.transaction():
                self._ack_conn.execute(dialect.consumer_update_sql(self.schema), params)
                if first_id is not None:
                    self._ack_conn.execute(dialect.purge_window_sql(self.schema), dict(params, first_id=first_id))
            self._swept_since_ack = False
            if time.monotonic() - self._last_sweep > SWEEP_INTERVAL:
                self._sweep(self._ack_conn)
        except psycopg.Error as exc:
            raise translate(exc, "acknowledging the source") from None

    def _sweep(self, conn) -> None:
        conn.execute(dialect.purge_sweep_sql(self.schema))
        self._last_sweep = time.monotonic()
        self._swept_since_ack = True

    def close(self) -> None:
        self.conn.close()
        if self._ack_conn is not None:
            self._ack_conn.close()
