"""Reads the SQLite trigger change log in id order (commit order, see :mod:`.position`)."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from decimal import Decimal

from engine.event import ChangeEvent, Op, TableId
from engine.jsontext import column_decoders, decode_row
from engine.seams import CapturedTable, ReadBatch, Reader, same_origin_prefix

from . import dialect
from .connection import connect, translate
from .position import SqliteLogPosition

_OPS = {"c": Op.CREATE, "u": Op.UPDATE, "d": Op.DELETE}


_IMAGE_DECODER = json.JSONDecoder(parse_float=Decimal)


def image_decoders(table: CapturedTable) -> dict:
    return column_decoders(table.info.columns, dialect.value_decoder)


def decode_image(text: str | None, decoders: dict):
    """A row image written by a capture trigger (or a snapshot read) as Python values."""
    return None if text is None else decode_row(_IMAGE_DECODER.decode(text), decoders, float)


class SqliteChangeLogReader(Reader):
    def __init__(self, url: str, consumer: str, tables: list[CapturedTable], start: str | None, node_id: str):
        self.consumer, self.node_id = consumer, node_id
        self.tables = {str(t.info.id): t for t in tables}
        self.tables_json = json.dumps(list(self.tables))
        self.decoders = {name: image_decoders(t) for name, t in self.tables.items()}
        self.position = SqliteLogPosition.deserialise(start) if start else SqliteLogPosition()
        self.conn = connect(url)
        self.url = self.database = url
        # acknowledgements run on the pipeline thread while the next batch is read on its prefetch thread:
        # one connection stepped by two threads breaks both (see engine.exchange.InboxReader)
        self._ack_conn: sqlite3.Connection | None = None
        self._execute(dialect.REGISTER_CONSUMER_SQL, (consumer, self.position.last_id, self.tables_json))

    def _execute(self, sql: str, params=(), conn: sqlite3.Connection | None = None,
                 what: str = "reading the change log"):
        try:
            return (conn or self.conn).execute(sql, params)
        except sqlite3.Error as exc:
            raise translate(exc, what) from None

    def read(self, max_events: int) -> ReadBatch:
        rows = same_origin_prefix(
            self._execute(dialect.READ_SQL, (self.position.last_id, self.tables_json, max_events)).fetchall(), 6)
        if rows:
            self.position = SqliteLogPosition(rows[-1][0])
        events = [self._event(row) for row in rows]
        return ReadBatch(events, self.position.serialise())

    def _event(self, row) -> ChangeEvent:
        row_id, tbl, op, pk, before, after, origin, captured_at = row
        return ChangeEvent(
            op=_OPS[op], table=TableId.parse(tbl), key=tuple(json.loads(pk)) if pk else (),
            before=decode_image(before, self.decoders[tbl]), after=decode_image(after, self.decoders[tbl]), seq=row_id,
            origin=origin or self.node_id, captured_at=datetime.fromisoformat(captured_at.replace("Z", "+00:00")),
            source_node=self.node_id, source_database=self.database)

    def acknowledge(self, position: str) -> None:
        last_id = SqliteLogPosition.deserialise(position).last_id
        if self._ack_conn is None:
            self._ack_conn = connect(self.url)
        conn, what = self._ack_conn, "acknowledging the change log"
        self._execute("BEGIN IMMEDIATE", (), conn, what)
        try:
            self._execute(dialect.UPDATE_CONSUMER_SQL, (last_id, self.consumer), conn, what)
            self._execute(dialect.PURGE_SQL, (last_id,), conn, what)
            self._execute("COMMIT", (), conn, what)
        except BaseException:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # no transaction left to roll back
            raise

    def close(self) -> None:
        if self._ack_conn is not None:
            self._ack_conn.close()
            self._ack_conn = None
        self.conn.close()
