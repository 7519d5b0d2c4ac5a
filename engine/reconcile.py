"""Reconciliation: compare a source table, seen through the pipeline's mapping, with its target table.

Each side hashes a normalised text of every row inside its own database (one
normalisation per engine, all agreeing with :func:`normalise`, the reference):
rows are grouped into buckets by a hash of the normalised key (never by key
order, so collations cannot mislead it), and per bucket the count and the exact
sum of 60-bit md5 prefixes are compared. Differing buckets are narrowed by
finer buckets until few rows remain; then only the rows' hashes are read, and
only the differing rows themselves are fetched. Mapped columns that cannot be
pushed down into SQL (casts, constants) are compared here in Python, on the
rows of the differing buckets.

No false positives while replication runs: the source's position is recorded
with its checksums; before judging, reconcile waits until the target's
checkpoint has applied everything up to it, then re-reads each differing row
on both sides. A row that is equal by then, or whose source has changes the
target has not applied yet, is *in flight*, not drift.

Repair goes through the normal apply path (mapping, ordering, dead letters),
inside the pipeline's apply lock, re-reading the source rows in the same
transaction, so the stream can never be overtaken by an older image.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import struct
import time as clock
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

from .apply import Batch, BatchApplier
from .errors import ConfigError, TerminalError
from .event import ChangeEvent, Op, TableId
from .mapping import CompiledMapping, TargetChange
from .plan import PipelinePlan
from .seams import BucketSum, CapturedTable, ChecksumSpec, CompareColumn, TableChecksummer

log = logging.getLogger(__name__)

KINDS = ("int", "decimal", "float", "bool", "timestamp", "date", "time", "json", "bytes", "text")
ROWS_TO_FETCH = 50_000  # narrow differing buckets until they hold at most this many rows
FETCH_CHUNK = 500  # keys per statement when fetching rows

ProgressCallback = Callable[[str, int, int], None]  # stage, done, total


# ------------------------------------------------------------------ the reference normalisation

def normalise(kind: str, value: Any) -> str | None:
    """The canonical text of ``value`` as a ``kind`` column; equal values give equal text on every engine.

    int: decimal digits. decimal: no exponent, no trailing zeros, no negative zero. float: the IEEE 754 bits
    (hex) of the value (+0.0, so -0 equals 0). bool: true/false. timestamp: the UTC instant (naive = UTC),
    ``YYYY-MM-DD HH:MM:SS[.ffffff without trailing zeros]``. date, time: the same parts. json: PostgreSQL
    jsonb's text (keys by length then bytes). bytes: lowercase hex. text: exactly as stored (NULL is distinct
    from '' and spaces count).
    """
    if value is None:
        return None
    try:
        return _NORMALISERS[kind](value)
    except (ValueError, TypeError, InvalidOperation, OverflowError, struct.error):
        return str(value)  # a value that is not of its column's kind (SQLite stores anything): as it is


def _int(value: Any) -> str:
    if isinstance(value, float) and not value.is_integer():
        return str(value)
    return str(int(Decimal(value.strip())) if isinstance(value, str) else int(value))


def _decimal_text(number: Decimal) -> str:
    if not number.is_finite():
        return "NaN" if number.is_nan() else ("Infinity" if number > 0 else "-Infinity")
    if number.is_zero():
        return "0"
    text = format(number, "f")  # exact (normalize() would round to the context's 28 digits)
    return text.rstrip("0").rstrip(".") if "." in text else text


def _decimal(value: Any) -> str:
    if isinstance(value, float):
        value = Decimal(repr(value))
    elif not isinstance(value, Decimal):
        value = Decimal(str(value).strip())
    return _decimal_text(value)


def _float(value: Any) -> str:
    return struct.pack(">d", float(value) + 0.0).hex()


def _bool(value: Any) -> str:
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("t", "true", "1", "y", "yes", "on"):
            return "true"
        if low in ("f", "false", "0", "n", "no", "off"):
            return "false"
        raise ValueError(value)
    return "true" if value else "false"


def _seconds(moment: datetime | time) -> str:
    """HH:MM:SS, then the fraction without trailing zeros (as PostgreSQL writes it)."""
    text = f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    return text + ("." + f"{moment.microsecond:06d}".rstrip("0") if moment.microsecond else "")


def _day(day: date) -> str:
    return f"{day.year:04d}-{day.month:02d}-{day.day:02d}"


def _timestamp(value: Any) -> str:
    if isinstance(value, str):
        value = datetime.fromisoformat(value.strip().replace(" ", "T", 1).replace("Z", "+00:00"))
    elif not isinstance(value, datetime):
        if isinstance(value, date):
            value = datetime(value.year, value.month, value.day)
        else:
            raise TypeError(value)
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return f"{_day(value)} {_seconds(value)}"


def _date(value: Any) -> str:
    if isinstance(value, datetime):
        return _day(value.date())
    if isinstance(value, date):
        return _day(value)
    return _day(date.fromisoformat(str(value).strip()[:10]))


def _time(value: Any) -> str:
    if isinstance(value, str):
        value = time.fromisoformat(value.strip())
    if isinstance(value, timedelta) and timedelta(0) <= value < timedelta(days=1):  # MySQL TIME, as drivers read it
        value = (datetime.min + value).time()
    if isinstance(value, datetime):
        value = value.time()
    return _seconds(value)


def _json(value: Any) -> str:
    """A decoded JSON document (a str is a JSON string; engines storing JSON as text parse it first)."""
    return jsonb_text(value)


def parse_json_text(value: Any) -> Any:
    """JSON stored as text (SQLite, MariaDB) as the document it holds; text that is not JSON stays a string."""
    if isinstance(value, (str, bytes)):
        try:
            return json.loads(value, parse_float=Decimal)
        except ValueError:
            return value
    return value


def jsonb_text(value: Any) -> str:
    """A JSON document written as PostgreSQL writes jsonb: the canonical JSON text of tiersync."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _json_number(Decimal(repr(value)))
    if isinstance(value, Decimal):
        return _json_number(value)
    if isinstance(value, dict):
        items = sorted(((str(k), v) for k, v in value.items()), key=lambda kv: (len(kv[0].encode()), kv[0].encode()))
        return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)}: {jsonb_text(v)}" for k, v in items) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(jsonb_text(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


def _json_number(number: Decimal) -> str:
    if not number.is_finite():
        return str(number)
    text = format(number, "f")  # jsonb keeps the scale (1.10) but never an exponent
    return text[1:] if number.is_zero() and text.startswith("-") else text


def _bytes(value: Any) -> str:
    if isinstance(value, str):
        return value[2:].lower() if value.startswith("\\x") else value.lower()
    return bytes(value).hex()


def _text(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return jsonb_text(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    return str(value)


_NORMALISERS: dict[str, Callable[[Any], str]] = {
    "int": _int, "decimal": _decimal, "float": _float, "bool": _bool, "timestamp": _timestamp, "date": _date,
    "time": _time, "json": _json, "bytes": _bytes, "text": _text,
}


SAFE_KINDS = ("int", "decimal", "float", "bool", "timestamp", "date", "time", "bytes")  # no comma, no backslash


def encode_values(texts) -> str:
    """Normalised values joined unambiguously: ``\\`` and ``,`` escaped by ``\\``, NULL as ``\\N``, commas between.

    Engines skip the escaping for SAFE_KINDS, whose canonical text has neither character.
    """
    return ",".join("\\N" if t is None else t.replace("\\", "\\\\").replace(",", "\\,") for t in texts)


def hash60(text: str) -> int:
    """The first 60 bits of md5(text) as an integer (what each engine computes in SQL)."""
    return int(hashlib.md5(text.encode("utf-8")).hexdigest()[:15], 16)


MASK60 = (1 << 60) - 1


def row_hash(key_text: str, row_text: str) -> int:
    return hash60(key_text + "|" + row_text)


def integer_key(kinds) -> bool:
    """A single integer key column is its own bucket hash (no md5 per row needed)."""
    return len(kinds) == 1 and kinds[0] == "int"


def key_hash(kinds, values, key_text: str) -> int:
    """``kh`` of engine.seams.TableChecksummer."""
    if integer_key(kinds):
        return int(values[0]) & MASK60
    return hash60(key_text)


# ------------------------------------------------------------------ what to compare

@dataclass
class ComparePlan:
    """One source table against its target table, column by column."""

    source: ChecksumSpec
    target: ChecksumSpec
    mapping: CompiledMapping
    captured: CapturedTable
    python_columns: list[tuple[str, str]]  # (target column, kind) compared in Python only
    key_kinds: tuple[str, ...]  # target key order
    target_key_of_source_key: Callable[[tuple], tuple] | None
    source_key_of_target_key: Callable[[tuple], tuple] | None

    @property
    def compared(self) -> list[tuple[str, str]]:
        """Every compared target column with its kind: the pushed-down ones, then the Python ones."""
        return [(c.name, c.kind) for c in self.target.columns] + self.python_columns


def _pair_kind(source_kind: str, target_kind: str) -> str:
    # a text target column holding a richer value (a SQLite TEXT column with timestamps) compares as that value
    return source_kind if target_kind == "text" and source_kind != "text" else target_kind


def compare_plan(plan: PipelinePlan, table: CapturedTable, where: str | None, target_where: str | None) -> ComparePlan:
    mapping = plan.mappings[table.info.id]
    if mapping.mode != "mirror":
        raise ConfigError([f"pipeline {plan.config.name}: {table.info.id} is replicated in {mapping.mode} mode; "
                           f"only mirrored tables can be reconciled (the target keeps rows the source deleted)"])
    target_info = plan.target_tables[mapping.target]
    pushed_source, pushed_target, python_columns = [], [], []
    renamed_from: dict[str, str] = {}
    for plan_ in mapping.plans.values():
        if plan_ is None:
            continue
        target_column = target_info.column(plan_.target)
        source_column = table.info.column(plan_.source)
        if target_column is None or source_column is None:
            continue
        kind = _pair_kind(plan.source.column_kind(source_column.type), plan.target.column_kind(target_column.type))
        pushable = plan.source.pushable(kind) and plan.target.pushable(kind)
        if plan_.convert is None:
            renamed_from[plan_.target] = plan_.source
        if plan_.convert is None and pushable:
            if plan_.target not in mapping.target_key:
                pushed_source.append(CompareColumn(plan_.source, source_column.type, kind))
                pushed_target.append(CompareColumn(plan_.target, target_column.type, kind))
        elif plan_.target not in mapping.target_key:
            python_columns.append((plan_.target, kind))
    for constant in mapping.constants:  # constants are checked in Python too
        target_column = target_info.column(constant)
        if target_column is not None and constant not in mapping.target_key:
            python_columns.append((constant, plan.target.column_kind(target_column.type)))
    if any(c not in renamed_from for c in mapping.target_key):
        raise ConfigError([f"pipeline {plan.config.name}: the target key of {mapping.target} "
                           f"({', '.join(mapping.target_key)}) is not a plain rename of source columns, "
                           f"so rows cannot be matched by key; reconcile needs renamed (not computed) key columns"])
    source_key, target_key, kinds = [], [], []
    for column in mapping.target_key:
        s_col, t_col = table.info.column(renamed_from[column]), target_info.column(column)
        kind = _pair_kind(plan.source.column_kind(s_col.type), plan.target.column_kind(t_col.type))
        source_key.append(CompareColumn(s_col.name, s_col.type, kind))
        target_key.append(CompareColumn(t_col.name, t_col.type, kind))
        kinds.append(kind)
    if mapping.source_key_of_target_key() is None:
        raise ConfigError([f"pipeline {plan.config.name}: the target key of {mapping.target} does not match the "
                           f"source key of {table.info.id} column for column, so rows cannot be matched by key"])
    source_spec = ChecksumSpec(table.info, tuple(source_key), tuple(pushed_source), where)
    target_spec = ChecksumSpec(target_info, tuple(target_key), tuple(pushed_target), target_where)
    # the captured key (the change log's) in the order of the target key, and back
    order = [table.key.index(c.name) if c.name in table.key else None for c in source_key]
    to_target = (lambda key: tuple(key[i] for i in order)) if None not in order and \
        sorted(order) == list(range(len(table.key))) else None
    return ComparePlan(source_spec, target_spec, mapping, table, python_columns, tuple(kinds), to_target,
                       mapping.source_key_of_target_key())


# ------------------------------------------------------------------ the result

@dataclass
class Difference:
    kind: str  # missing | extra | different | in_flight
    key: list
    columns: list[str] = field(default_factory=list)


@dataclass
class TableReport:
    source_table: str
    target_table: str
    source_rows: int = 0
    target_rows: int = 0
    missing: list[Difference] = field(default_factory=list)
    extra: list[Difference] = field(default_factory=list)
    different: list[Difference] = field(default_factory=list)
    in_flight: list[Difference] = field(default_factory=list)
    buckets: int = 0
    differing_buckets: int = 0
    rows_fetched: int = 0
    fenced: bool = False
    fence_note: str = ""
    seconds: float = 0.0

    @property
    def drifted(self) -> int:
        return len(self.missing) + len(self.extra) + len(self.different)

    @property
    def differing_fraction(self) -> float:
        return self.drifted / max(self.source_rows, self.target_rows, 1)

    def counts(self) -> dict:
        return {"missing": len(self.missing), "extra": len(self.extra), "different": len(self.different),
                "in_flight": len(self.in_flight)}

    def to_json(self, limit: int | None = None) -> dict:
        def keys(items):
            return [d.key for d in items[:limit]]
        columns: dict[str, int] = {}
        for d in self.different:
            for c in d.columns:
                columns[c] = columns.get(c, 0) + 1
        return {"source_table": self.source_table, "target_table": self.target_table, **self.counts(),
                "source_rows": self.source_rows, "target_rows": self.target_rows,
                "keys": {"missing": keys(self.missing), "extra": keys(self.extra), "different": keys(self.different),
                         "in_flight": keys(self.in_flight)},
                "different_columns": {json.dumps(d.key, default=str): d.columns for d in self.different[:limit]},
                "columns_differing": columns, "buckets": self.buckets, "differing_buckets": self.differing_buckets,
                "rows_fetched": self.rows_fetched, "fenced": self.fenced, "fence_note": self.fence_note,
                "seconds": round(self.seconds, 3)}


# ------------------------------------------------------------------ comparing

@dataclass
class _Side:
    checksummer: TableChecksummer
    scanner: Any  # TableScanner


class Reconciler:
    """Compares (and repairs) the tables of one pipeline."""

    def __init__(self, plan: PipelinePlan, tables: list[str] | None = None, where: str | None = None,
                 target_where: str | None = None, on_progress: ProgressCallback | None = None,
                 fence_timeout: float = 60.0, fence_poll: float = 0.2):
        self.plan = plan
        self.name = plan.config.name
        self.tables = plan.selected(tables)
        self.where = where
        self.target_where = target_where if target_where is not None else where
        self.on_progress = on_progress or (lambda stage, done, total: None)
        self.fence_timeout = fence_timeout
        self.fence_poll = fence_poll
        self.compares = {t.info.id: compare_plan(plan, t, self.where, self.target_where) for t in self.tables}

    # -------------------------------------------------------------- one table

    def compare(self, table: TableId, keys_only: list[tuple] | None = None) -> TableReport:
        """Compare one table; ``keys_only`` (keys in target-key order) checks just those rows (incremental runs)."""
        cp = self.compares[table]
        report = TableReport(str(table), str(cp.mapping.target))
        started = clock.monotonic()
        source = _Side(self.plan.source.checksummer(cp.source), self.plan.source.table_scanner(cp.captured))
        target_captured = CapturedTable(cp.target.table, tuple(c.name for c in cp.target.key))
        target = _Side(self.plan.target.checksummer(cp.target), self.plan.target.table_scanner(target_captured))
        pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="reconcile")
        try:
            if keys_only is None:
                candidates, head = self._narrow(cp, source, target, report, pool)
            else:
                candidates = (set(), set(), {tuple(k) for k in keys_only})
                head = self._head()
            self._judge(cp, source, target, candidates, head, report)
        finally:
            pool.shutdown(wait=True)
            for side in (source, target):
                side.checksummer.close()
                side.scanner.close()
        report.seconds = clock.monotonic() - started
        return report

    def _head(self) -> str | None:
        return self.plan.source.fence_head(self.plan.config.source)

    def _narrow(self, cp: ComparePlan, source: _Side, target: _Side, report: TableReport, pool):
        """Candidate keys (source keys, target keys) whose rows may differ, and the source head at hashing time."""
        estimate = source.scanner.count(cp.source.where)
        bits = min(24, max(4, math.ceil(math.log2(max(estimate, 1) / 256)) if estimate > 256 else 4))
        self.on_progress("checksums", 0, 2)

        def source_pass(bits_, within, within_bits):
            sums = source.checksummer.bucket_sums(bits_, within, within_bits)
            return sums, self._head()

        src_future = pool.submit(source_pass, bits, None, 0)
        dst_future = pool.submit(target.checksummer.bucket_sums, bits, None, 0)
        (src, head), dst = src_future.result(), dst_future.result()
        self.on_progress("checksums", 2, 2)
        report.source_rows = sum(b.count for b in src.values())
        report.target_rows = sum(b.count for b in dst.values())
        report.buckets = 1 << bits
        differing = _differing(src, dst)
        report.differing_buckets = len(differing)
        # narrow until the differing buckets are small enough to read their rows' hashes
        while differing and bits < 60:
            rows_in = sum(max(src.get(b, _EMPTY).count, dst.get(b, _EMPTY).count) for b in differing)
            if rows_in <= ROWS_TO_FETCH:
                break
            finer = min(60, bits + 8)
            src_future = pool.submit(source_pass, finer, sorted(differing), bits)
            dst_future = pool.submit(target.checksummer.bucket_sums, finer, sorted(differing), bits)
            (src, _), dst = src_future.result(), dst_future.result()
            bits = finer
            differing = _differing(src, dst)
        if not differing:
            return (set(), set(), set()), head
        self.on_progress("row hashes", 0, len(differing))
        within = sorted(differing)
        src_future = pool.submit(source.checksummer.row_hashes, within, bits)
        dst_future = pool.submit(target.checksummer.row_hashes, within, bits)
        src_rows, dst_rows = src_future.result(), dst_future.result()
        self.on_progress("row hashes", len(differing), len(differing))
        source_keys = {v[1] for k, v in src_rows.items() if k not in dst_rows or dst_rows[k][0] != v[0]}
        target_keys = {v[1] for k, v in dst_rows.items() if k not in src_rows}
        # columns checked only in Python: every other row of the differing buckets is read too
        checked = {v[1] for v in src_rows.values()} - source_keys if cp.python_columns else set()
        return (source_keys, target_keys, checked), head

    # -------------------------------------------------------------- judging candidates

    ROUNDS = 4  # reads of the candidates at most, while replication keeps changing them

    def _judge(self, cp: ComparePlan, source: _Side, target: _Side, candidates, head, report: TableReport):
        """Classify the candidate keys (target-key order) by reading their rows again on both sides.

        Without a change log (nothing replicates) one read decides. With one, each read waits until the target's
        checkpoint has applied everything the source had committed before the previous read (the fence), and a
        row is drift only if it differs in two consecutive reads with the same values both times; a row that
        became equal, or kept changing, was in flight.
        """
        source_keys, target_keys, checked_keys = candidates
        keys = source_keys | target_keys | checked_keys
        if not keys:
            return
        first_seen = {self._key_text(cp, k) for k in source_keys | target_keys}
        previous: dict[str, tuple] | None = None
        fenced = head is not None
        unstable: set[str] = set()
        for round_ in range(self.ROUNDS if head is not None else 1):
            if head is not None and not self._wait_for(cp, head, report):
                fenced = False
            state = self._read(cp, source, target, keys, report)  # key text → (source, target, columns)
            if head is None or not fenced:
                break  # nothing replicates (one read decides), or the target is not catching up
            head = self.plan.source.fence_head(self.plan.config.source)
            if previous is not None:
                unstable = {k for k, v in state.items() if v[2] and previous.get(k, (None, None, []))[:2] != v[:2]}
                if not unstable:
                    break
            if round_ == self.ROUNDS - 1:
                unstable = {k for k, v in state.items() if v[2]} if previous is None else unstable
            previous = state
        report.fenced = fenced
        pending: set[str] = set()
        if not fenced and head is not None:  # the target did not catch up: rows with unapplied changes are in flight
            checkpoint = self.plan.target.load_checkpoint(self.name)
            unapplied = self.plan.source.unapplied(self.plan.config.source, self.name, [cp.captured.info.id],
                                                   checkpoint) or []
            if cp.target_key_of_source_key is not None:
                pending = {self._key_text(cp, cp.target_key_of_source_key(tuple(key))) for _, key in unapplied}
        for key_text in sorted(set(state) | first_seen):
            src, dst, columns = state.get(key_text, (None, None, []))
            key = list((src or dst)[0]) if (src or dst) else [key_text]
            if not columns:  # equal now (or gone from both sides) though it differed at first: it was changing
                if key_text in first_seen:
                    report.in_flight.append(Difference("in_flight", key))
                continue
            if key_text in unstable or key_text in pending:
                report.in_flight.append(Difference("in_flight", key, columns if src and dst else []))
            elif src is None:
                report.extra.append(Difference("extra", key))
            elif dst is None:
                report.missing.append(Difference("missing", key))
            else:
                report.different.append(Difference("different", key, columns))
        for found in (report.missing, report.extra, report.different, report.in_flight):
            found.sort(key=_key_order)

    def _wait_for(self, cp: ComparePlan, head: str, report: TableReport) -> bool:
        """Wait until the target's checkpoint has applied every change the source had committed at ``head``."""
        deadline = clock.monotonic() + self.fence_timeout
        while True:
            checkpoint = self.plan.target.load_checkpoint(self.name)
            waiting = self.plan.source.unapplied(self.plan.config.source, self.name, [cp.captured.info.id],
                                                 checkpoint, head)
            if waiting is not None and not waiting:
                return True
            if waiting is None or clock.monotonic() > deadline:
                report.fence_note = (f"the target had not applied the source's changes up to the comparison within "
                                     f"{self.fence_timeout:g}s (is the pipeline running?); rows with unapplied "
                                     f"changes are reported in flight")
                return False
            self.on_progress("waiting for the target's checkpoint", 0, 1)
            clock.sleep(self.fence_poll)

    def _read(self, cp: ComparePlan, source: _Side, target: _Side, keys: set[tuple], report: TableReport) -> dict:
        """Key text → (normalised source row, normalised target row, differing columns); the target is read first."""
        back = cp.source_key_of_target_key
        dst_rows = {self._row_key_text(cp, r): r for r in self._fetch(target.scanner, list(keys), report)}
        mapped: dict[str, dict] = {}
        for row in self._fetch(source.scanner, [back(k) for k in keys], report):
            target_row = self._map(cp, row)
            if target_row is not None:
                mapped[self._row_key_text(cp, target_row)] = target_row
        state = {}
        for key_text in set(mapped) | set(dst_rows):
            src, dst = mapped.get(key_text), dst_rows.get(key_text)
            src_n = self._normalised(cp, src) if src is not None else None
            dst_n = self._normalised(cp, dst) if dst is not None else None
            if src_n is not None and dst_n is not None:
                columns = [name for (name, _), a, b in zip(cp.compared, src_n[1], dst_n[1]) if a != b]
            else:
                columns = ["*"]
            state[key_text] = (src_n, dst_n, columns)
        return state

    def _normalised(self, cp: ComparePlan, row: dict) -> tuple:
        return (self._target_key(cp, row), tuple(normalise(kind, row.get(name)) for name, kind in cp.compared))

    def _fetch(self, scanner, keys: list[tuple], report: TableReport) -> list[dict]:
        rows: list[dict] = []
        for start in range(0, len(keys), FETCH_CHUNK):
            rows += scanner.rows(keys[start:start + FETCH_CHUNK])
            self.on_progress("fetching rows", min(start + FETCH_CHUNK, len(keys)), len(keys))
        report.rows_fetched += len(rows)
        return rows

    def _map(self, cp: ComparePlan, row: dict) -> dict | None:
        source_key = tuple(row.get(c) for c in cp.captured.key)
        event = ChangeEvent(Op.READ, cp.captured.info.id, source_key, None, row, seq=0, origin=self.plan.node_id,
                            origin_tier=self.plan.node_tier, captured_at=datetime.now(timezone.utc),
                            source_node=self.plan.node_id, snapshot=True)
        try:
            changes = cp.mapping.map(event)
        except (ValueError, TypeError, ArithmeticError) as exc:
            log.warning("reconcile: mapping the source row %s failed: %s", source_key, exc)
            return None
        upserts = [c for c in changes if c.kind == "upsert"]
        return upserts[-1].row if upserts else None

    def _target_key(self, cp: ComparePlan, row: dict) -> tuple:
        return tuple(row.get(c.name) for c in cp.target.key)

    def _key_text(self, cp: ComparePlan, key: tuple) -> str:
        return encode_values(normalise(kind, v) for kind, v in zip(cp.key_kinds, key))

    def _row_key_text(self, cp: ComparePlan, row: dict) -> str:
        return self._key_text(cp, self._target_key(cp, row))

    # -------------------------------------------------------------- repair

    def repair(self, table: TableId, report: TableReport, max_repair: int | None = None,
               delete: bool = True) -> dict:
        """Apply the source's current rows for the drifted keys through the apply path; returns what it did."""
        cp = self.compares[table]
        todo = [(d.kind, tuple(d.key)) for d in report.missing + report.different]
        if delete:
            todo += [("extra", tuple(d.key)) for d in report.extra]
        limited = todo[:max_repair] if max_repair is not None else todo
        back = cp.source_key_of_target_key
        if back is None:
            raise TerminalError(f"cannot repair {cp.mapping.target}: its key is not a plain rename of the source's")
        done = {"upserted": 0, "deleted": 0, "dead_letters": 0, "skipped": len(todo) - len(limited)}
        if not limited:
            return done
        self.plan.target.ensure_state()
        session = self.plan.target.target_session()
        scanner = self.plan.source.table_scanner(cp.captured)
        try:
            applier = BatchApplier(session, self.plan.target_tables)
            for start in range(0, len(limited), FETCH_CHUNK):
                part = limited[start:start + FETCH_CHUNK]
                with applier.transaction(self.name):  # the stream cannot apply between this read and write
                    rows = {self._row_key_text(cp, r): r for r in
                            (self._map(cp, row) for row in scanner.rows([back(k) for _, k in part])) if r is not None}
                    changes: list[TargetChange] = []
                    now = datetime.now(timezone.utc)
                    for i, (kind, key) in enumerate(part):
                        key_text = self._key_text(cp, key)
                        row = rows.get(key_text)
                        if row is not None:
                            event = ChangeEvent(Op.READ, cp.captured.info.id, back(key), None, row, seq=i,
                                                origin=self.plan.node_id, origin_tier=self.plan.node_tier,
                                                captured_at=now,
                                                source_node=self.plan.node_id, snapshot=True)
                            changes.append(TargetChange("upsert", cp.mapping.target, key, row, event,
                                                        cp.mapping.target_key))
                        elif kind == "extra" and delete:
                            event = ChangeEvent(Op.DELETE, cp.captured.info.id, back(key), None, None, seq=i,
                                                origin=self.plan.node_id, origin_tier=self.plan.node_tier,
                                                captured_at=now,
                                                source_node=self.plan.node_id)
                            changes.append(TargetChange("delete", cp.mapping.target, key, None, event,
                                                        cp.mapping.target_key))
                    result = applier.apply_open(Batch(self.name, changes, "reconcile", len(changes)))
                    done["dead_letters"] += result.dead_letters
                    done["upserted"] += sum(1 for c in changes if c.kind == "upsert")
                    done["deleted"] += sum(1 for c in changes if c.kind == "delete")
        finally:
            scanner.close()
            session.close()
        return done


_EMPTY = BucketSum(0, 0)


def _key_order(difference: Difference) -> list:
    """Keys in their natural order (numbers as numbers), whatever their types."""
    return [(0, v, "") if isinstance(v, (int, float, Decimal)) and not isinstance(v, bool) else (1, 0, str(v))
            for v in difference.key]


def _differing(source: dict[int, BucketSum], target: dict[int, BucketSum]) -> set[int]:
    return {b for b in set(source) | set(target) if source.get(b, _EMPTY) != target.get(b, _EMPTY)}


# ------------------------------------------------------------------ run history

RUN_FIELDS = ("pipeline", "source_table", "started_at", "run_by", "mode", "result", "missing", "extra", "different",
              "in_flight", "repaired", "report")


def run_record(pipeline: str, report: TableReport, started_at: datetime, run_by: str, mode: str, result: str,
               repaired: dict | None, keys_kept: int = 100) -> dict:
    """One reconcile run of one table, as the target's history table stores it (first keys only)."""
    document = report.to_json(keys_kept)
    return {"pipeline": pipeline, "source_table": report.source_table, "started_at": started_at, "run_by": run_by,
            "mode": mode, "result": result, "missing": len(report.missing), "extra": len(report.extra),
            "different": len(report.different), "in_flight": len(report.in_flight),
            "repaired": json.dumps(repaired, default=str) if repaired else None,
            "report": json.dumps(document, default=str, ensure_ascii=False)}


# ------------------------------------------------------------------ incremental verification

def verify_consumer(pipeline: str) -> str:
    """The change-log consumer that remembers how far incremental verification has come."""
    return f"{pipeline}.verify"


@dataclass
class ChangedKeys:
    """Keys (target-key order) changed at the source since the last verified position, read by a verify consumer."""

    keys: dict[TableId, set[tuple]]
    position: str | None
    first_run: bool
    reader: Any  # the verify consumer's reader; acknowledge(position) once verified

    def close(self) -> None:
        self.reader.close()


def changed_keys(reconciler: Reconciler, max_events: int = 10000) -> ChangedKeys:
    """Read the source's change log as the pipeline's verify consumer, from its last verified position.

    The verify consumer is registered with the change log like a pipeline, so the log keeps its changes until
    a verification acknowledges them (run incremental verification regularly, or the log grows).
    """
    plan = reconciler.plan
    if plan.config.source.capture != "trigger":
        raise ConfigError([f"pipeline {plan.config.name}: --since-checkpoint reads the trigger change log; "
                           f"this pipeline uses {plan.config.source.capture} capture (run full reconciles instead)"])
    consumer = verify_consumer(plan.config.name)
    start = plan.target.load_checkpoint(consumer)
    tables = [reconciler.compares[t.info.id].captured for t in reconciler.tables]
    reader = plan.source.reader(plan.config.source, consumer, tables, start, plan.node_id)
    keys: dict[TableId, set[tuple]] = {t.info.id: set() for t in tables}
    position = start
    try:
        while True:
            batch = reader.read(max_events)
            position = batch.position
            for event in batch.events:
                cp = reconciler.compares.get(event.table)
                if cp is None or cp.target_key_of_source_key is None:
                    continue
                for image in (event.before, event.after):
                    if image is not None:
                        keys[event.table].add(cp.target_key_of_source_key(tuple(image.get(c) for c in cp.captured.key)))
            if not batch.events and batch.caught_up:
                break
    except BaseException:
        reader.close()
        raise
    return ChangedKeys(keys, position, start is None, reader)

