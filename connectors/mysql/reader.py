"""Reads the MySQL/MariaDB trigger change log without skipping a change that commits out of id order.

MySQL gives SQL no snapshot of running transactions, so ``id > last_id`` is not enough: a transaction
that took id 5 may commit after the one that took id 6. The reader therefore delivers every committed row
it sees, in id order, and keeps each id it passed without seeing as an *open gap* in its position; a
later read asks for the rows above ``high`` *and* the open gaps, so a late commit is delivered late but
delivered. Delivering id 6 before id 5 is safe: two changes of the same row (or a child and the parent it
references) are ordered by InnoDB's row locks, so the later one cannot have committed while the earlier
one's transaction is still open.

An open gap is closed when no transaction that could hold its ids is left (else it is an id a rolled-back
transaction used, which never appears): the reader notes the transactions running just after it saw the
gap (``information_schema.INNODB_TRX``, asked from inside a transaction of its own so the answer is known
to be fresh), waits until every one of them has ended, then reads once more; ids still missing then are
gone for good. The wait is bounded in what it holds back, not in time: nothing waits for a gap (later rows
flow on), a gap held open longer than ``GAP_WARN_SECONDS`` is logged with the transactions holding it,
and past ``MAX_OPEN_GAPS`` the reader stops moving past new gaps until the old ones close.
"""

from __future__ import annotations

import json
import logging
import time
from decimal import Decimal

import pymysql

from engine.event import ChangeEvent, Op
from engine.jsontext import decode_row
from engine.seams import CapturedTable, ReadBatch, Reader

from . import dialect
from .connection import as_utc, connect, database_of, zero_dates_kept
from .errors import translate
from .position import MysqlLogPosition, Ranges, count_ids, without
from .values import value_decoder

log = logging.getLogger(__name__)

_OPS = {"c": Op.CREATE, "u": Op.UPDATE, "d": Op.DELETE}
GAP_WARN_SECONDS = 60.0
SAMPLE_INTERVAL = 0.25  # seconds between looks at INNODB_TRX (a cache that a look within 0.1 s keeps stale)
MAX_OPEN_GAPS = 2000  # ranges; beyond this the reader holds back instead of opening more
PURGE_ROWS = 10_000


def _json_int(text: str):
    return Decimal(text) if text == "-0" or len(text) > 4000 else int(text)


_IMAGE_DECODER = json.JSONDecoder(parse_float=Decimal, parse_int=_json_int)


def parse_image(text: str | None):
    return None if text is None else _IMAGE_DECODER.decode(text)


def image_decoders(table: CapturedTable, keep_zero_dates: bool) -> dict:
    decoders = {}
    for column in table.info.columns:
        decode = value_decoder(column.type, str(table.info.id), column.name, keep_zero_dates)
        if decode is not None:
            decoders[column.name] = decode
    return decoders


def _integral(number: Decimal) -> int | Decimal:
    """A number in a column without a decoder (an integer "-0" …): an int where it is whole."""
    return int(number) if number == number.to_integral_value() else number


def decode_image(text: str | None, decoders: dict):
    return decode_row(parse_image(text), decoders, _integral)


class _Generation:
    """Open gaps seen together, and the transactions that were running just after they were seen."""

    def __init__(self, gaps: Ranges, running: dict):
        self.gaps = gaps
        self.running = running  # trx id → (thread id, started)
        self.since = time.monotonic()
        self.warned = False


class MysqlChangeLogReader(Reader):
    def __init__(self, url: str, consumer: str, tables: list[CapturedTable], start: str | None, node_id: str):
        self.consumer, self.node_id = consumer, node_id
        self.tables = {str(t.info.id): t for t in tables}
        self.table_names = list(self.tables)
        keep = zero_dates_kept(url)
        self.decoders = {name: image_decoders(t, keep) for name, t in self.tables.items()}
        self.table_ids = {name: t.info.id for name, t in self.tables.items()}
        self.keys = {name: t.key for name, t in self.tables.items()}
        self.position = MysqlLogPosition.deserialise(start) if start else MysqlLogPosition()
        self.url = url
        self.database = database_of(url) or ""
        self.conn = connect(url, autocommit=True)
        self._ack_conn = None
        self._generation: _Generation | None = None
        self._closing: Ranges = ()  # gaps whose transactions have all ended: ids not read next time are gone
        self._held_back = False
        self._next_sample = 0.0
        self._execute(dialect.READER_SESSION_SQL[0])
        self._execute(dialect.REGISTER_CONSUMER_SQL, (consumer, self.position.floor, json.dumps(self.table_names)))

    def _execute(self, sql: str, params=None, what: str = "reading the change log", conn=None):
        cur = (conn or self.conn).cursor()
        try:
            cur.execute(sql, params)
            return cur.fetchall()
        except pymysql.Error as exc:
            raise translate(exc, what) from None
        finally:
            cur.close()

    # -------------------------------------------------------------- the transactions behind gaps

    def _running(self) -> dict | None:
        """Transactions running now (trx id → (thread, started)), or None when INNODB_TRX was not fresh."""
        try:
            with self.conn.cursor() as cur:
                cur.execute("BEGIN")
                try:
                    cur.execute(dialect.MARK_READER_SQL, (self.consumer,))
                    cur.execute(dialect.RUNNING_TRANSACTIONS_SQL)
                    rows = cur.fetchall()
                finally:
                    cur.execute("ROLLBACK")
        except pymysql.Error as exc:
            raise translate(exc, "reading the running transactions") from None
        if not any(own for _, own, _, _ in rows):
            return None  # a cached answer from before this transaction began
        return {trx: (thread, started) for trx, own, started, thread in rows if not own}

    def _watch_gaps(self) -> None:
        """Start watching the open gaps, or close the watched ones once their transactions have ended."""
        gaps = self.position.open_gaps
        if not gaps or time.monotonic() < self._next_sample:
            return
        self._next_sample = time.monotonic() + SAMPLE_INTERVAL  # INNODB_TRX refreshes only when left alone
        running = self._running()
        if running is None:
            return
        generation = self._generation
        if generation is None:
            generation = self._generation = _Generation(gaps, running)
        else:
            generation.running = {trx: info for trx, info in generation.running.items() if trx in running}
        if not generation.running:
            self._closing = generation.gaps  # the next read sees every committed row they could hold
            self._generation = None
            return
        age = time.monotonic() - generation.since
        if age > GAP_WARN_SECONDS and not generation.warned:
            generation.warned = True
            holders = ", ".join(f"thread {thread} (since {started})" for thread, started in
                                generation.running.values())
            log.warning("change-log ids %s of %s are held open for %.0f s: transactions that may still commit "
                        "them are running (%s); later changes flow on, these follow when they commit",
                        dialect_ranges(generation.gaps), self.database, age, holders)

    # -------------------------------------------------------------- reading

    def read(self, max_events: int) -> ReadBatch:
        self._watch_gaps()
        position = self.position
        gaps = position.open_gaps
        params: list = list(self.table_names) * 2 + [position.high]
        for low, high in gaps:
            params += [low, high]
        params.append(max_events)
        rows = self._execute(dialect.read_sql(len(self.table_names), len(gaps)), params)
        checked_below = rows[-1][0] if len(rows) == max_events else None  # ids under this were all looked at
        seen = {r[0] for r in rows}
        if self._closing:
            self._close_gaps(seen, checked_below)
        rows = _same_origin_prefix([r for r in rows if r[0] <= position.high] + self._new_rows(rows, position))
        if not rows:
            # gaps closed: a batch without events, so that the position is saved with the checkpoint
            return ReadBatch([], self.position.serialise(), ends_transaction=self.position != position,
                             caught_up=not self._held_back)
        delivered = {r[0] for r in rows}
        high = max(position.high, rows[-1][0])
        new_gaps = tuple(_missing(position.high, high, delivered))
        open_gaps = without(self.position.open_gaps, delivered) + new_gaps
        self.position = MysqlLogPosition(high, open_gaps)
        events = [self._event(row) for row in rows if row[1] in self.tables]  # other pipelines' rows: passed
        return ReadBatch(events, self.position.serialise(), caught_up=False)

    def _new_rows(self, rows: list, position: MysqlLogPosition) -> list:
        """The rows above ``high`` the reader may move on to (all, unless too many gaps are open)."""
        above = [r for r in rows if r[0] > position.high]
        if len(position.open_gaps) < MAX_OPEN_GAPS:
            self._held_back = False
            return above
        expected, taken = position.high + 1, []
        for row in above:  # too many gaps open: only rows that open no new gap
            if row[0] != expected:
                break
            taken.append(row)
            expected += 1
        if len(taken) < len(above) and not self._held_back:
            log.warning("%d id gaps of %s's change log are open: holding back until they close",
                        len(position.open_gaps), self.database)
        self._held_back = len(taken) < len(above)
        return taken

    def _close_gaps(self, seen: set[int], checked_below: int | None) -> None:
        closing, self._closing = self._closing, ()
        gone = []
        for low, high in closing:
            top = high if checked_below is None else min(high, checked_below - 1)
            if top >= low:
                gone.append((low, top))
        if not gone:
            return
        absent = without(tuple(gone), seen)
        if absent:
            remaining = _subtract(self.position.open_gaps, absent)
            log.debug("change-log ids %s of %s never committed (rolled back): closed", dialect_ranges(absent),
                      self.database)
            self.position = MysqlLogPosition(self.position.high, remaining)

    def _event(self, row) -> ChangeEvent:
        row_id, tbl, op, before, after, origin, captured_at = row
        decoders = self.decoders[tbl]
        before, after = decode_image(before or None, decoders), decode_image(after, decoders)
        image = after if after is not None else before
        return ChangeEvent(
            op=_OPS[op], table=self.table_ids[tbl], key=tuple(image.get(c) for c in self.keys[tbl]),
            before=before, after=after, seq=row_id, origin=origin or self.node_id,
            captured_at=as_utc(captured_at),
            source_node=self.node_id, source_database=self.database)

    # -------------------------------------------------------------- acknowledging

    def acknowledge(self, position: str) -> None:
        """The target has committed up to ``position``: record it, and purge what every consumer has passed."""
        pos = MysqlLogPosition.deserialise(position)
        if self._ack_conn is None:
            self._ack_conn = connect(self.url, autocommit=True)
            # read committed: the purge's range scan must not wait on rows of transactions still open
            self._execute(dialect.READER_SESSION_SQL[0], None, "acknowledging", self._ack_conn)
        conn = self._ack_conn
        self._execute(dialect.UPDATE_CONSUMER_SQL, (pos.floor, position, self.consumer), "acknowledging", conn)
        floor = self._execute(dialect.PURGE_FLOOR_SQL, None, "acknowledging", conn)[0][0] or 0
        head = self._execute(dialect.HEAD_SQL, None, "acknowledging", conn)[0][0]
        while floor > 0:
            cur = conn.cursor()
            try:
                deleted = cur.execute(dialect.PURGE_SQL, (floor, head))
            except pymysql.Error as exc:
                raise translate(exc, "purging the change log") from None
            finally:
                cur.close()
            if deleted < PURGE_ROWS:
                break

    def close(self) -> None:
        for conn in (self.conn, self._ack_conn):
            if conn is not None:
                try:
                    conn.close()
                except pymysql.Error:
                    pass


def _missing(low: int, high: int, delivered: set[int]) -> list[tuple[int, int]]:
    """The ranges of ids in (low, high) not in ``delivered``."""
    gaps, start = [], low + 1
    for i in sorted(i for i in delivered if low < i <= high):
        if i > start:
            gaps.append((start, i - 1))
        start = i + 1
    return gaps


def _subtract(ranges: Ranges, removed: Ranges) -> Ranges:
    out = list(ranges)
    for r_low, r_high in removed:
        kept = []
        for low, high in out:
            if high < r_low or low > r_high:
                kept.append((low, high))
                continue
            if low < r_low:
                kept.append((low, r_low - 1))
            if high > r_high:
                kept.append((r_high + 1, high))
        out = kept
    return tuple(out)


def _same_origin_prefix(rows: list) -> list:
    """The leading rows whose captured changes share one origin (rows of other tables carry no change)."""
    origin = _NONE = object()
    for i, row in enumerate(rows):
        if row[3] is None:  # another pipeline's table: its images were not read
            continue
        if origin is _NONE:
            origin = row[5]
        elif row[5] != origin:
            return rows[:i]
    return rows


def dialect_ranges(ranges: Ranges) -> str:
    from .position import ranges_text

    text = ranges_text(ranges)
    return text if len(text) < 200 else f"{text[:200]}… ({count_ids(ranges)} ids)"
