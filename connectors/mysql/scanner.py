"""Chunked reads of a MySQL/MariaDB table's current rows (full loads, extra target rows, reconcile) and its
bucket checksums (reconcile)."""

from __future__ import annotations

import pymysql

from engine.seams import BucketSum, CapturedTable, ChecksumSpec, TableChecksummer, TableScanner

from . import dialect, reconcile_sql
from .connection import connect, zero_dates_kept
from .errors import translate
from .reader import decode_image, image_decoders


class MysqlTableScanner(TableScanner):
    """Each chunk is one short statement (read committed): no long transaction holds the source back."""

    def __init__(self, url: str, table: CapturedTable):
        self.table = table
        self.decoders = image_decoders(table, zero_dates_kept(url))
        self.conn = connect(url, autocommit=True)
        self._run(dialect.READER_SESSION_SQL[0])

    def _run(self, sql: str, params=None) -> list:
        try:
            with self.conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall())
        except pymysql.Error as exc:
            raise translate(exc, f"reading {self.table.info.id}") from None

    def count(self, where: str | None) -> int:
        return self._run(dialect.count_sql(self.table.info.id, where))[0][0]

    def chunk(self, after: tuple | None, limit: int, where: str | None) -> list[dict]:
        key = self.table.key
        sql = dialect.chunk_sql(self.table.info, key, after is not None, where)
        params = (dialect.key_params(after, key) if after is not None else []) + [limit]
        return [decode_image(text, self.decoders) for (text,) in self._run(sql, params)]

    def keys(self, after: tuple | None, limit: int) -> list[tuple]:
        key = self.table.key
        sql = dialect.keys_sql(self.table.info.id, key, after is not None)
        params = (dialect.key_params(after, key) if after is not None else []) + [limit]
        return [tuple(r) for r in self._run(sql, params)]

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
        try:
            self.conn.close()
        except pymysql.Error:
            pass


class MysqlChecksummer(TableChecksummer):
    """Bucket checksums of a table's normalised rows, computed by MariaDB/MySQL (one statement per call)."""

    def __init__(self, url: str, spec: ChecksumSpec):
        self.spec = spec
        self.conn = connect(url, autocommit=True)
        for statement in dialect.READER_SESSION_SQL + reconcile_sql.SESSION_SQL:
            self._run(statement, ())

    def _run(self, sql: str, params) -> list:
        try:
            with self.conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall())
        except pymysql.Error as exc:
            raise translate(exc, f"checksumming {self.spec.table.id}") from None

    def bucket_sums(self, bits: int, within: list[int] | None, within_bits: int) -> dict[int, BucketSum]:
        if within is not None and not within:
            return {}
        sql = reconcile_sql.bucket_sums_sql(self.spec, bits, len(within) if within is not None else None,
                                            within_bits if within is not None else None)
        rows = self._run(sql, tuple(within or ()))
        return {int(b): BucketSum(int(n), int(total)) for b, n, total in rows}

    def row_hashes(self, within: list[int], within_bits: int) -> dict[str, tuple[int, tuple]]:
        if not within:
            return {}
        rows = self._run(reconcile_sql.row_hashes_sql(self.spec, len(within), within_bits), tuple(within))
        return {r[0]: (int(r[1]), tuple(r[2:])) for r in rows}

    def close(self) -> None:
        try:
            self.conn.close()
        except pymysql.Error:
            pass
