"""Chunked reads of a SQLite table's current rows, for full loads and for finding extra target rows."""

from __future__ import annotations

import sqlite3

from engine.seams import CapturedTable, TableScanner

from . import dialect
from .connection import connect, translate
from .reader import decode_image, image_decoders


class SqliteTableScanner(TableScanner):
    def __init__(self, url: str, table: CapturedTable):
        self.table = table
        self.decoders = image_decoders(table)
        self.conn = connect(url)

    def _run(self, sql: str, params=()):
        try:
            return self.conn.execute(sql, params)
        except sqlite3.Error as exc:
            raise translate(exc, f"reading {self.table.info.id}") from None

    def count(self, where: str | None) -> int:
        return self._run(dialect.count_sql(self.table.info.id, where)).fetchone()[0]

    def chunk(self, after: tuple | None, limit: int, where: str | None) -> list[dict]:
        sql = dialect.chunk_sql(self.table.info, self.table.key, after is not None, where)
        return [decode_image(text, self.decoders) for (text,) in self._run(sql, (*(after or ()), limit))]

    def keys(self, after: tuple | None, limit: int) -> list[tuple]:
        sql = dialect.keys_sql(self.table.info.id, self.table.key, after is not None)
        return [tuple(r) for r in self._run(sql, (*(after or ()), limit))]

    def existing(self, keys: list[tuple]) -> set[tuple]:
        if not keys:
            return set()
        sql = dialect.existing_keys_sql(self.table.info.id, self.table.key, len(keys))
        return {tuple(r) for r in self._run(sql, [v for k in keys for v in k])}

    def close(self) -> None:
        self.conn.close()
