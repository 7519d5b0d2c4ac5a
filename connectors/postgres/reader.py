"""Reads the PostgreSQL trigger change log in commit-safe order (see :mod:`.position`)."""

from __future__ import annotations

import logging

import psycopg

from engine.event import ChangeEvent, Op
from engine.seams import CapturedTable, ReadBatch, Reader

from . import dialect
from .connection import connect, parse_image
from .errors import translate
from .position import PostgresLogPosition

log = logging.getLogger(__name__)

_OPS = {"c": Op.CREATE, "u": Op.UPDATE, "d": Op.DELETE}


class PostgresChangeLogReader(Reader):
    """One consumer's view of the change log: reads ranges of finished transactions, purges on acknowledge."""

    def __init__(self, url: str, schema: str, consumer: str, tables: list[CapturedTable],
                 start: str | None, node_id: str):
        self.url, self.schema, self.consumer, self.node_id = url, schema, consumer, node_id
        self.tables = {str(t.info.id): t for t in tables}
        self.table_names = list(self.tables)
        self.decoders = {name: self._decoders(t) for name, t in self.tables.items()}
        self.table_ids = {name: t.info.id for name, t in self.tables.items()}
        self.keys = {name: t.key for name, t in self.tables.items()}  # the log's pk column is for people
        self.position = PostgresLogPosition.deserialise(start) if start else PostgresLogPosition()
        self.conn = connect(url, autocommit=True, application="tiersync-reader")
        self.database = self.conn.info.dbname
        self._purged_below = -1
        self._register()

    @staticmethod
    def _decoders(table: CapturedTable) -> dict:
        decoders = {}
        for column in table.info.columns:
            decoder = dialect.value_decoder(column.type)
            if decoder is not None:
                decoders[column.name] = decoder
        return decoders

    def _execute(self, sql: str, params: dict | None = None, what: str = "reading the change log"):
        try:
            return self.conn.execute(sql, params)
        except psycopg.Error as exc:
            raise translate(exc, what) from None

    def _params(self, position: PostgresLogPosition) -> dict:
        return {"lo": position.lo, "hi": position.hi, "last_id": position.last_id, "name": self.consumer,
                "tables": self.table_names}

    def _register(self) -> None:
        self._execute(dialect.register_consumer_sql(self.schema), self._params(self.position),
                      "registering the consumer")

    def _decode(self, table: str, text: str | None):
        image = parse_image(text)
        if image is None:
            return None
        for column, decode in self.decoders[table].items():
            value = image.get(column)
            if value is not None:
                image[column] = decode(value)
        return image

    def read(self, max_events: int) -> ReadBatch:
        position = self.position
        for _ in range(2):  # at most: finish the current range, then open the next one
            rows = self._execute(dialect.read_sql(self.schema),
                                 dict(self._params(position), limit=max_events)).fetchall()
            if rows:
                events = [self._event(row) for row in rows]
                position = PostgresLogPosition(position.lo, position.hi, rows[-1][0])
                self.position = position
                return ReadBatch(events, position.serialise())
            horizon = self._execute(dialect.HORIZON_SQL).fetchone()[0]
            if horizon <= position.hi:
                break
            position = PostgresLogPosition(position.hi, horizon, 0)
            self.position = position
        return ReadBatch([], position.serialise())

    def _event(self, row) -> ChangeEvent:
        row_id, txid, tbl, op, before, after, origin, captured_at = row
        before, after = self._decode(tbl, before), self._decode(tbl, after)
        image = after if after is not None else before
        return ChangeEvent(
            op=_OPS[op], table=self.table_ids[tbl], key=tuple(image.get(c) for c in self.keys[tbl]),
            before=before, after=after, seq=row_id, txid=txid,
            origin=origin or self.node_id, captured_at=captured_at, source_node=self.node_id,
            source_database=self.database)

    def acknowledge(self, position: str) -> None:
        """The target has committed everything up to ``position``: record it and purge what all consumers have."""
        pos = PostgresLogPosition.deserialise(position)
        params = self._params(pos)
        self._execute(dialect.consumer_update_sql(self.schema), params, "acknowledging the source")
        self._execute(dialect.purge_sql(self.schema, by_range=True), params, "purging the change log")
        if pos.lo != self._purged_below:  # a new range: rows of older ranges above last_id can go too
            self._execute(dialect.purge_sql(self.schema, by_range=False), params, "purging the change log")
            self._purged_below = pos.lo

    def close(self) -> None:
        self.conn.close()
