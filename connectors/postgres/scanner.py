"""Chunked reads of a PostgreSQL table's current rows, for full loads and for finding extra target rows."""

from __future__ import annotations

import psycopg

from engine.jsontext import column_decoders, decode_row
from engine.seams import BucketSum, CapturedTable, ChecksumSpec, TableChecksummer, TableScanner

from . import dialect
from .connection import connect, parse_image
from .errors import translate


def image_decoders(table: CapturedTable) -> dict:
    return column_decoders(table.info.columns, dialect.value_decoder)


def decode_image(text: str | None, decoders: dict):
    """A row image written by a capture trigger (or a snapshot read) as Python values."""
    return decode_row(parse_image(text), decoders)


class PostgresTableScanner(TableScanner):
    """Each chunk is one short statement: no long transaction holds back the source's vacuum."""

    def __init__(self, url: str, table: CapturedTable):
        self.table = table
        self.decoders = image_decoders(table)
        self.conn = connect(url, autocommit=True, application="tiersync-snapshot")
        self._run("SET extra_float_digits = 1")

    def _run(self, sql: str, params=()):
        try:
            return self.conn.execute(sql, params)
        except psycopg.Error as exc:
            raise translate(exc, f"reading {self.table.info.id}") from None

    def count(self, where: str | None) -> int:
        return self._run(dialect.count_sql(self.table.info.id, where)).fetchone()[0]

    def chunk(self, after: tuple | None, limit: int, where: str | None) -> list[dict]:
        sql = dialect.chunk_sql(self.table.info.id, self.table.key, after is not None, where)
        rows = self._run(sql, (*(after or ()), limit)).fetchall()
        return [decode_image(text, self.decoders) for (text,) in rows]

    def keys(self, after: tuple | None, limit: int) -> list[tuple]:
        sql = dialect.keys_sql(self.table.info.id, self.table.key, after is not None)
        return [tuple(r) for r in self._run(sql, (*(after or ()), limit)).fetchall()]

    def existing(self, keys: list[tuple]) -> set[tuple]:
        if not keys:
            return set()
        sql = dialect.existing_keys_sql(self.table.info.id, self.table.key, len(keys))
        return {tuple(r) for r in self._run(sql, [v for k in keys for v in k]).fetchall()}

    def rows(self, keys: list[tuple]) -> list[dict]:
        if not keys:
            return []
        sql = dialect.rows_by_key_sql(self.table.info.id, self.table.key, len(keys))
        return [decode_image(text, self.decoders) for (text,) in self._run(sql, [v for k in keys for v in k])]

    def close(self) -> None:
        self.conn.close()


class PostgresChecksummer(TableChecksummer):
    """Bucket checksums of a table's normalised rows, computed by PostgreSQL (one statement per call)."""

    def __init__(self, url: str, spec: ChecksumSpec):
        self.spec = spec
        self.conn = connect(url, autocommit=True, application="tiersync-reconcile")
        for statement in dialect.CHECKSUM_SESSION_SQL:
            self._run(statement)

    def _run(self, sql: str, params=()):
        try:
            return self.conn.execute(sql, params)
        except psycopg.Error as exc:
            raise translate(exc, f"checksumming {self.spec.table.id}") from None

    def bucket_sums(self, bits: int, within: list[int] | None, within_bits: int) -> dict[int, BucketSum]:
        sql = dialect.bucket_sums_sql(self.spec, bits, within_bits if within is not None else None)
        rows = self._run(sql, (within,) if within is not None else ()).fetchall()
        return {b: BucketSum(n, int(total)) for b, n, total in rows}

    def row_hashes(self, within: list[int], within_bits: int) -> dict[str, tuple[int, tuple]]:
        rows = self._run(dialect.row_hashes_sql(self.spec, within_bits), (within,)).fetchall()
        return {r[0]: (r[1], tuple(r[2:])) for r in rows}

    def close(self) -> None:
        self.conn.close()
