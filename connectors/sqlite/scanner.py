"""Chunked reads of a SQLite table's current rows, for full loads and for finding extra target rows."""

from __future__ import annotations

import json
import sqlite3

from engine.reconcile import hash60, normalise, parse_json_text
from engine.seams import BucketSum, CapturedTable, ChecksumSpec, TableChecksummer, TableScanner

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

    def rows(self, keys: list[tuple]) -> list[dict]:
        if not keys:
            return []
        sql = dialect.rows_by_key_sql(self.table.info, self.table.key, len(keys))
        return [decode_image(text, self.decoders) for (text,) in self._run(sql, [v for k in keys for v in k])]

    def close(self) -> None:
        self.conn.close()


def _normalise_stored(kind: str, value):
    """engine.reconcile.normalise of a value as SQLite stores it (JSON as its text)."""
    return normalise(kind, parse_json_text(value) if kind == "json" else value)


class _ExactSum:
    """sum() of integers of any size (SQLite's own raises on overflow); the total is returned as text."""

    def __init__(self):
        self.total = 0

    def step(self, value) -> None:
        self.total += value

    def finalize(self) -> str:
        return str(self.total)


class SqliteChecksummer(TableChecksummer):
    """Bucket checksums computed by SQLite, with tiersync's normalisation and hash as SQL functions."""

    def __init__(self, url: str, spec: ChecksumSpec):
        self.spec = spec
        self.conn = connect(url)
        self.conn.create_function("tiersync_norm", 2, _normalise_stored, deterministic=True)
        self.conn.create_function("tiersync_h60", 1, hash60, deterministic=True)
        self.conn.create_aggregate("tiersync_sum", 1, _ExactSum)

    def _run(self, sql: str, params=()):
        try:
            return self.conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise translate(exc, f"checksumming {self.spec.table.id}") from None

    def bucket_sums(self, bits: int, within: list[int] | None, within_bits: int) -> dict[int, BucketSum]:
        sql = dialect.bucket_sums_sql(self.spec, bits, within_bits if within is not None else None)
        rows = self._run(sql, (json.dumps(within),) if within is not None else ())
        return {b: BucketSum(n, int(total)) for b, n, total in rows}

    def row_hashes(self, within: list[int], within_bits: int) -> dict[str, tuple[int, tuple]]:
        rows = self._run(dialect.row_hashes_sql(self.spec, within_bits), (json.dumps(within),))
        return {r[0]: (r[1], tuple(r[2:])) for r in rows}

    def close(self) -> None:
        self.conn.close()
