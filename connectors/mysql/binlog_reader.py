"""Capture from a MySQL/MariaDB binary log (python-mysql-replication on pymysql) as change events.

The reader registers as a replica, streams ROW events and hands over whole source transactions in binlog
(commit) order; one larger than a batch goes out in parts flagged ``more`` and is committed at the target
when its last part arrives. Positions are the GTID state and file:offset after a transaction (see
:mod:`.binlog_position`); the target stores them with the rows, and the reader resumes from there.

Columns are named by the binlog itself (``binlog_row_metadata = FULL``), so a row can never be read with
another shape's column order. A table whose binlog rows carry columns the pipeline does not know stops the
stream: if the live table has them (added since the pipeline planned), the runner re-plans and carries on;
if it does not (dropped or renamed since those changes were written) the pipeline stops with what to do.

Liveness: the server sends a heartbeat every second when it has nothing to send; a socket silent for
``WATCHDOG_SECONDS`` (no event, no heartbeat) is a stalled stream and the reader reconnects from the
checkpoint instead of waiting forever. The library's own silent reconnect is refused, because it would
resume from where the *stream* was, not from what the target has committed.

Loop prevention: tiersync's apply sessions write one row into ``tiersync_apply_origin`` (any database)
first in every transaction they commit; its ``origin`` column names the node the changes come from. The
reader takes that as the transaction's origin and never hands the marker row out.
"""

from __future__ import annotations

import json
import logging
import re
import struct
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pymysql
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.constants import FIELD_TYPE
from pymysqlreplication.event import (
    GtidEvent,
    HeartbeatLogEvent,
    MariadbGtidEvent,
    QueryEvent,
    RotateEvent,
    XidEvent,
)
from pymysqlreplication.row_event import DeleteRowsEvent, TableMapEvent, UpdateRowsEvent, WriteRowsEvent

from engine.errors import TerminalError, TransientError
from engine.event import ChangeEvent, Op, TableId
from engine.seams import CapturedTable, ReadBatch, Reader, SourceProgress

from . import binlog_rows
from .binlog_admin import (
    ServerBinlog,
    capture_problems,
    lag,
    purged_problem,
    read_server,
    server_id_for,
    setting_problems,
)
from .binlog_position import BinlogPosition, binlog_file_number
from .connection import connect, connect_args
from .errors import translate
from .gtid import gtid_state

log = logging.getLogger(__name__)

MARKER_TABLE = "tiersync_apply_origin"  # written by tiersync's apply sessions; column `origin`
HEARTBEAT_SECONDS = 1.0
WATCHDOG_SECONDS = 10.0  # no event and no heartbeat for this long: the stream is stalled
POLL_SECONDS = 0.5
IDLE_CHECKPOINT_SECONDS = 5.0  # how often an idle reader lets its position (past other tables' changes) be saved
CATCH_UP_WAIT = 10.0
_MARIADB_STANDALONE = 0x01  # GTID event flag: a statement that is its own transaction (DDL)
_TRUNCATE = re.compile(r"^\s*TRUNCATE\s+(?:TABLE\s+)?(?:`?([^`.\s]+)`?\s*\.\s*)?`?([^`\s;]+)`?\s*;?\s*$", re.I)
_ROW_EVENTS = (WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent)


class _StreamLost(Exception):
    """The replication connection broke (or stalled past the watchdog) and must not be silently reopened."""


@dataclass
class _Txn:
    gtid: str | None
    explicit: bool  # BEGIN … COMMIT/XID (statements inside do not end it)
    start: BinlogPosition  # the position just before it
    captured_at: datetime | None
    txid: int | None = None
    origin: str = ""
    seq: int = 0
    skip_first: int = 0
    started: bool = False  # some of its changes were already handed out (in parts flagged `more`)
    events: list = field(default_factory=list)
    position: BinlogPosition | None = None


@dataclass
class _TablePlan:
    table: TableId
    key: tuple[str, ...]
    converters: tuple[tuple[str, object], ...]  # (column, convert) for the columns whose values need it
    set_columns: tuple[str, ...]
    drop: tuple[str, ...] = ()


_EPOCH = datetime(1970, 1, 1)


def _utc(value):
    return None if value == _EPOCH else value.replace(tzinfo=timezone.utc)  # 0 is MySQL's zero TIMESTAMP


def _bits(value):
    return int(value, 2) if isinstance(value, str) else value


def _year(value):
    return None if value == 1900 else value  # YEAR 0000


def _json(value):
    """A JSON document as the trigger images and full loads give it: numbers exact (Decimal only where a float
    would change them), MariaDB's JSON (text in the binlog) parsed."""
    if isinstance(value, (str, bytes)):
        try:
            return _json(json.loads(value, parse_float=Decimal))
        except ValueError:
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    if isinstance(value, Decimal):
        as_float = float(value)
        return as_float if repr(as_float) == str(value) else value
    if isinstance(value, dict):
        return {(k.decode() if isinstance(k, bytes) else k): _json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json(v) for v in value]
    return value


def _float32(value):
    """A FLOAT column's value as MySQL shows it: the shortest decimal that is the same single-precision number."""
    packed = struct.pack("<f", value)
    for digits in range(6, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.pack("<f", candidate) == packed:
            return candidate
    return value


def _clock(fraction_digits: int):
    def convert(value):
        """A TIME within a day as a time; MySQL's interval-like TIME (negative, over 24 h) as MySQL's text."""
        if isinstance(value, timedelta):
            if value < timedelta(0) and value.microseconds:
                # python-mysql-replication 1.0.17 reads a negative TIME2's fraction as its complement
                # (-00:00:01.25 comes as -00:00:01.75): undo it
                magnitude = -value // _MICRO
                whole, fraction = divmod(magnitude, 1_000_000)
                value = -timedelta(seconds=whole, microseconds=1_000_000 - fraction)
            if timedelta(0) <= value < _DAY:
                return (datetime.min + value).time()
            sign = "-" if value < timedelta(0) else ""
            micros = abs(value) // timedelta(microseconds=1)
            seconds, micro = divmod(micros, 1_000_000)
            text = f"{sign}{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
            return text + (f".{micro:06d}"[:fraction_digits + 1] if fraction_digits else "")
        return value
    return convert


_DAY = timedelta(days=1)
_MICRO = timedelta(microseconds=1)
_CONVERTERS = {
    FIELD_TYPE.FLOAT: _float32,
    FIELD_TYPE.TIMESTAMP: _utc,
    FIELD_TYPE.TIMESTAMP2: _utc,
    FIELD_TYPE.BIT: _bits,
    FIELD_TYPE.YEAR: _year,
    FIELD_TYPE.JSON: _json,
}


def _set_text(column):
    order = list(column.set_values or ())

    def convert(value):
        return ",".join(v for v in order if v in value)
    return convert


class MysqlBinlogReader(Reader):
    def __init__(self, url: str, consumer: str, tables: list[CapturedTable], start: str | None, node_id: str,
                 split_transactions: bool = False, watchdog_seconds: float = WATCHDOG_SECONDS):
        self.url = url
        self.node_id = node_id
        self.split = split_transactions
        self.watchdog = watchdog_seconds
        self.database = connect_args(url)["database"] or ""
        self.tables: dict[tuple, CapturedTable] = {}
        for table in tables:
            schema = table.info.id.schema or self.database
            self.tables[(schema, table.info.id.name)] = table
        self.server_id = server_id_for(url, consumer)
        binlog_rows.install()  # the faster row decoder for tables of common column types
        server, grants = self._server()
        self.mariadb = server.mariadb
        start_position = BinlogPosition.deserialise(start) if start else None
        problems = setting_problems(server, grants, position=start_position)
        if problems:
            raise TerminalError("binlog capture cannot start:\n  " + "\n  ".join(problems))
        self.start = start_position
        self.position = start_position or server.position
        self._save_start = start_position is None  # hand the start out once, so a crash cannot move it
        self._handed = self.position
        self._idle_since = time.monotonic()
        self._drain_to = (binlog_file_number(server.file), server.pos)
        self._plans: dict[tuple, _TablePlan | None] = {}
        self._live_columns: dict[tuple, set[str]] = {}
        self.gtids = gtid_state(self.position.gtid)
        self.txn: _Txn | None = None
        self._carry: _Txn | None = None
        self._skip_first = self.position.applied
        self._stream_connections = 0
        self.stream = self._open_stream()

    # ------------------------------------------------------------------ connection

    def _server(self) -> tuple[ServerBinlog, str]:
        conn = connect(self.url, autocommit=True)
        try:
            server = read_server(conn)
            with conn.cursor() as cur:
                cur.execute("SHOW GRANTS FOR CURRENT_USER()")
                grants = " ".join(r[0] for r in cur.fetchall()).upper()
            return server, grants
        except pymysql.Error as exc:
            raise translate(exc, "reading the server's binlog settings") from None
        finally:
            conn.close()

    def _connect(self, **settings):
        if settings.get("db") != "information_schema":
            self._stream_connections += 1
            if self._stream_connections > 1:  # the library reconnecting on its own after a lost connection
                raise _StreamLost("the replication connection was lost")
        try:
            return pymysql.connect(**settings)
        except pymysql.Error as exc:
            raise translate(exc, "opening the binlog stream") from None

    def _open_stream(self) -> BinLogStreamReader:
        args = connect_args(self.url)
        settings = {"host": args["host"], "port": args["port"], "user": args["user"], "password": args["password"],
                    "charset": "utf8mb4", "connect_timeout": args["connect_timeout"],
                    "read_timeout": max(int(self.watchdog), 1)}
        if "unix_socket" in args:
            settings["unix_socket"] = args["unix_socket"]
        names = {name for _, name in self.tables} | {MARKER_TABLE}
        position = self.position
        common = dict(connection_settings=settings, server_id=self.server_id, blocking=True,
                      slave_heartbeat=HEARTBEAT_SECONDS, only_tables=sorted(names), enable_logging=False,
                      pymysql_wrapper=self._connect)
        if position.gtid:
            log.info("binlog: resuming after GTID %s", position.gtid)
            return BinLogStreamReader(**common, is_mariadb=self.mariadb, auto_position=position.gtid)
        log.info("binlog: resuming at %s:%s", position.file, position.pos)
        return BinLogStreamReader(**common, log_file=position.file, log_pos=position.pos, resume_stream=True)

    # ------------------------------------------------------------------ reading

    def read(self, max_events: int) -> ReadBatch:
        try:
            return self._read(max_events)
        except _StreamLost as exc:
            raise TransientError(f"binlog stream: {exc} (no event or heartbeat within {self.watchdog:.0f} s, "
                                 f"or the server went away); reconnecting from the checkpoint") from None
        except pymysql.err.OperationalError as exc:
            code = exc.args[0] if exc.args else None
            if code == 1236:
                raise TerminalError(f"the server cannot send the binlog from {self.position.serialise()}: "
                                    f"{exc.args[1] if len(exc.args) > 1 else exc} — the binlogs were purged or "
                                    f"the GTID is unknown; re-load with `tiersync snapshot`, then "
                                    f"`tiersync binlog mark`") from None
            raise translate(exc, "reading the binlog") from None
        except pymysql.Error as exc:
            raise translate(exc, "reading the binlog") from None

    def _read(self, max_events: int) -> ReadBatch:
        if self._save_start:  # first start: make the start position durable before anything else
            self._save_start = False
            return ReadBatch([], self.position.serialise(), ends_transaction=True)
        events: list[ChangeEvent] = []
        batch_origin: str | None = None
        if self._carry is not None:  # a whole transaction held back from the previous batch
            carried, self._carry = self._carry, None
            events, batch_origin, self.position = carried.events, carried.origin, carried.position
        now = time.monotonic()
        deadline = now + POLL_SECONDS
        catch_up_deadline = now + CATCH_UP_WAIT
        stream = self.stream
        while True:
            txn = self.txn
            if txn is not None and len(txn.events) >= max_events:  # a transaction larger than a batch
                return self._hand_over_part(events, txn, max_events)
            if txn is not None and events and len(events) + len(txn.events) >= max_events:
                return self._handed_out(ReadBatch(events, self.position.serialise()))
            if txn is None and time.monotonic() >= deadline:
                if events:
                    return self._handed_out(ReadBatch(events, self.position.serialise()))
                if not self._caught_up() and time.monotonic() < catch_up_deadline:
                    deadline = time.monotonic() + POLL_SECONDS
                    continue
                return self._idle(events)
            event = stream.fetchone()
            kind = type(event)
            if kind in _ROW_EVENTS:
                self._rows(event, kind)
            elif kind is XidEvent:
                done = self._commit(event)
                if done is not None:
                    batch = self._add_committed(events, batch_origin, done, max_events)
                    if batch is not None:
                        return batch
                    batch_origin = done.origin if done.events or done.started else batch_origin
                    deadline = min(deadline, time.monotonic() + 0.05)  # take what is already there, then go
            elif kind is MariadbGtidEvent or kind is GtidEvent:
                self._begin(event, kind)
            elif kind is QueryEvent:
                done = self._query(event)
                if done is not None:
                    batch = self._add_committed(events, batch_origin, done, max_events)
                    if batch is not None:
                        return batch
                    batch_origin = done.origin if done.events or done.started else batch_origin
            elif kind is HeartbeatLogEvent or kind is RotateEvent or kind is TableMapEvent:
                pass

    def _add_committed(self, events: list, batch_origin: str | None, txn: _Txn, max_events: int):
        """Add a committed transaction to the batch; returns a batch to hand out now, or None to go on."""
        if not txn.events and not txn.started:
            self.position = txn.position  # nothing captured in it: just move past it
            return None
        if events and not txn.started and txn.origin != batch_origin:
            self._carry = txn  # one target transaction carries one origin: this one opens the next batch
            return self._handed_out(ReadBatch(events, self.position.serialise()))
        events += txn.events
        self.position = txn.position
        if txn.started:  # the end of a transaction handed over in parts: commit it now
            return self._handed_out(ReadBatch(events, self.position.serialise(), ends_transaction=True))
        if len(events) >= max_events:
            return self._handed_out(ReadBatch(events, self.position.serialise()))
        return None

    def _handed_out(self, batch: ReadBatch) -> ReadBatch:
        self._handed = self.position
        self._idle_since = time.monotonic()
        batch.caught_up = self._caught_up()
        return batch

    def _idle(self, events: list) -> ReadBatch:
        """Nothing captured arrived: now and then let the position past other tables' changes be saved, so a
        restart does not re-read them and the checkpoint does not fall behind binlog retention."""
        caught_up = self._caught_up()
        if (self.position != self._handed and self.txn is None and self._carry is None
                and time.monotonic() - self._idle_since >= IDLE_CHECKPOINT_SECONDS):
            return self._handed_out(ReadBatch(events, self.position.serialise(), ends_transaction=True))
        return ReadBatch(events, self.position.serialise(), caught_up=caught_up)

    def _hand_over_part(self, events: list, txn: _Txn, max_events: int) -> ReadBatch:
        """Part of a transaction larger than a batch (a row event holds many rows: the rest waits)."""
        room = max(max_events - len(events), 1)
        part, txn.events = txn.events[:room], txn.events[room:]
        events += part
        txn.started = True
        if self.split:  # this part commits on its own, at a position inside the transaction
            self.position = BinlogPosition(txn.start.gtid, txn.start.file, txn.start.pos, part[-1].seq)
            return self._handed_out(ReadBatch(events, self.position.serialise()))
        return self._handed_out(ReadBatch(events, self.position.serialise(), more=True))

    # ------------------------------------------------------------------ transactions

    def _begin(self, event, kind) -> None:
        if kind is MariadbGtidEvent:
            explicit = not (event.flags & _MARIADB_STANDALONE)
            txid = event.gtid_seq_no
        else:
            explicit, txid = False, event.gno  # MySQL: a BEGIN query follows for a transaction
        self._open(event.gtid, explicit, event.timestamp, txid)

    def _open(self, gtid: str | None, explicit: bool, timestamp: int, txid: int | None) -> None:
        start = self.position if self.txn is None else self.txn.start
        captured_at = datetime.fromtimestamp(timestamp, timezone.utc) if timestamp else None
        txn = _Txn(gtid, explicit, start, captured_at, txid)
        if self._skip_first:  # resuming inside a transaction that was split over several target transactions
            txn.skip_first, self._skip_first = self._skip_first, 0
        self.txn = txn

    def _query(self, event) -> _Txn | None:
        query = event.query.strip()
        upper = query[:9].upper()
        if upper == "BEGIN" or upper.startswith("XA START"):
            if self.txn is None:
                self._open(None, True, event.timestamp, None)
            else:
                self.txn.explicit = True
            return None
        if upper.startswith("COMMIT") or upper.startswith("ROLLBACK") and query.upper() == "ROLLBACK":
            return self._commit(event)
        if self.txn is not None and self.txn.explicit:
            return None  # SAVEPOINT and the like inside a transaction
        if self.txn is None:
            self._open(None, False, event.timestamp, None)
        self._ddl(query, event)
        return self._commit(event)

    def _ddl(self, query: str, event) -> None:
        """A statement outside a row transaction: TRUNCATE of a captured table becomes a truncate event."""
        match = _TRUNCATE.match(query)
        if not match:
            if any(name in query for _, name in self.tables):
                log.info("binlog: DDL on a captured table at %s: %s", self.position.serialise(), query[:200])
                self._plans.clear()
                self._live_columns.clear()
            return
        schema = match.group(1) or (event.schema.decode() if isinstance(event.schema, bytes) else event.schema)
        captured = self.tables.get((schema or self.database, match.group(2)))
        if captured is not None:
            self._add(self.txn, Op.TRUNCATE, captured.info.id, (), None, None)

    def _commit(self, event) -> _Txn | None:
        txn, self.txn = self.txn, None
        if txn is None:
            return None
        if txn.gtid:
            self.gtids.add(txn.gtid)
        txn.position = BinlogPosition(str(self.gtids), self.stream.log_file, event.packet.log_pos, 0)
        return txn

    # ------------------------------------------------------------------ rows

    def _plan(self, event) -> _TablePlan | None:
        schema, name = event.schema, event.table
        captured = self.tables.get((schema, name))
        if captured is None:
            return None
        columns = event.columns
        names = [c.name for c in columns]
        known = set(captured.info.column_names)
        missing_key = [k for k in captured.key if k not in names]
        if missing_key:
            raise TerminalError(f"{captured.info.id}: binlog rows at {self.position.serialise()} lack key "
                                f"column(s) {', '.join(missing_key)} (dropped or renamed): re-load the table "
                                f"with `tiersync snapshot` and continue with `tiersync binlog mark`")
        unknown = [n for n in names if n not in known]
        drop: tuple[str, ...] = ()
        if unknown:
            live = self._live(schema, name)
            gone = [n for n in unknown if n not in live]
            if not gone:
                raise TransientError(f"{captured.info.id} changed while captured: column(s) {', '.join(unknown)} "
                                     f"added or renamed; re-reading the table definitions (add them to the target "
                                     f"or drop them in the mapping if the restart reports them)")
            absent = [n for n in captured.info.column_names if n not in names]
            if absent:  # columns gone and others new since: a rename cannot be told from a drop and an add
                raise TerminalError(
                    f"{captured.info.id}: binlog rows at {self.position.serialise()} carry column(s) "
                    f"{', '.join(gone)} that the table no longer has, and lack {', '.join(absent)} that it has now "
                    f"(renamed, or dropped and added, after these changes were written); tiersync does not guess "
                    f"where their values belong: re-load the table with `tiersync snapshot --table {name}` and "
                    f"continue with `tiersync binlog mark`")
            log.warning("binlog: %s rows at %s carry column(s) %s dropped from the table since: left out",
                        captured.info.id, self.position.serialise(), ", ".join(gone))
            drop = tuple(gone)
        converters = []
        sets = []
        for column in columns:
            if column.name in drop:
                continue
            convert = _CONVERTERS.get(column.type)
            if column.type == FIELD_TYPE.SET:
                convert = _set_text(column)
                sets.append(column.name)
            elif column.type in (FIELD_TYPE.TIME, FIELD_TYPE.TIME2):
                convert = _clock(getattr(column, "fsp", 0) or 0)
            elif "json" in (captured.info.column(column.name).type or "").lower():
                convert = _json  # MariaDB's JSON is text in the binlog
            if convert is not None:
                converters.append((column.name, convert))
        return _TablePlan(captured.info.id, captured.key, tuple(converters), tuple(sets), drop)

    def _live(self, schema: str, name: str) -> set[str]:
        key = (schema, name)
        if key not in self._live_columns:
            conn = connect(self.url, autocommit=True)
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT column_name FROM information_schema.columns "
                                "WHERE table_schema = %s AND table_name = %s", (schema, name))
                    self._live_columns[key] = {r[0] for r in cur.fetchall()}
            finally:
                conn.close()
        return self._live_columns[key]

    def _rows(self, event, kind) -> None:
        txn = self.txn
        if txn is None:  # row events outside any transaction marker (should not happen): one of their own
            self._open(None, False, event.timestamp, None)
            txn = self.txn
        if event.table == MARKER_TABLE:
            for row in event.rows:
                image = row.get("after_values") or row.get("values") or {}
                if image.get("origin"):
                    txn.origin = str(image["origin"])
                    for change in txn.events:  # changes the transaction made before the marker, if any
                        change.origin = txn.origin
            return
        columns = event.columns
        signature = (event.schema, event.table, tuple((c.name, c.type) for c in columns))
        plan = self._plans.get(signature, False)
        if plan is False:
            plan = self._plans[signature] = self._plan(event)
        if plan is None:
            return
        key = plan.key
        if kind is WriteRowsEvent:
            for row in event.rows:
                after = self._image(plan, row["values"], row.get("none_sources"))
                self._add(txn, Op.CREATE, plan.table, tuple(after[k] for k in key), None, after)
        elif kind is UpdateRowsEvent:
            for row in event.rows:
                before = self._image(plan, row["before_values"], row.get("before_none_sources"))
                after = self._image(plan, row["after_values"], row.get("after_none_sources"))
                self._add(txn, Op.UPDATE, plan.table, tuple(after[k] for k in key), before, after)
        else:
            for row in event.rows:
                before = self._image(plan, row["values"], row.get("none_sources"))
                self._add(txn, Op.DELETE, plan.table, tuple(before[k] for k in key), before, None)

    @staticmethod
    def _image(plan: _TablePlan, values: dict, none_sources) -> dict:
        for name in plan.drop:
            del values[name]
        for name, convert in plan.converters:
            value = values[name]
            if value is not None:
                values[name] = convert(value)
        for name in plan.set_columns:  # the library reads an empty SET as None
            if values[name] is None and none_sources and none_sources.get(name) == "empty set":
                values[name] = ""
        return values

    def _add(self, txn: _Txn, op: Op, table: TableId, key: tuple, before, after) -> None:
        txn.seq += 1
        if txn.seq <= txn.skip_first:
            return
        txn.events.append(ChangeEvent(
            op=op, table=table, key=key, before=before, after=after, seq=txn.seq, txid=txn.txid,
            origin=txn.origin or self.node_id, captured_at=txn.captured_at, source_node=self.node_id,
            source_database=self.database))

    # ------------------------------------------------------------------ progress

    def _caught_up(self) -> bool:
        """Whether the stream has passed where the binlog ended when this reader started."""
        if self._drain_to is None:
            return True
        stream = self.stream
        if (binlog_file_number(stream.log_file or ""), stream.log_pos or 0) >= self._drain_to:
            self._drain_to = None
        return self._drain_to is None

    def acknowledge(self, position: str) -> None:
        """Nothing to release: the binlog belongs to the server (retention is checked at start-up)."""

    def close(self) -> None:
        try:
            self.stream.close()
        except Exception:  # noqa: BLE001 - closing a broken connection
            pass


def binlog_reader_for(url: str, source, consumer: str, tables: list[CapturedTable], start: str | None,
                      node_id: str) -> MysqlBinlogReader:
    """The reader a MySQL/MariaDB connector hands out for ``capture: binlog``."""
    return MysqlBinlogReader(url, consumer, tables, start, node_id,
                             split_transactions=getattr(source, "split_transactions", False))


def binlog_capture_problems(url: str, position: str | None = None) -> list[str]:
    """The connector's start-up check for ``capture: binlog`` (one line per missing setting)."""
    return capture_problems(url, position)


def first_pending_time(url: str, position: BinlogPosition, consumer: str) -> datetime | None:
    """When the oldest transaction after ``position`` was written (None: nothing after it).

    A blocking stream with heartbeats (MariaDB resets non-blocking dumps of large transactions): the first
    heartbeat before any transaction means nothing is pending."""
    args = connect_args(url)
    settings = {"host": args["host"], "port": args["port"], "user": args["user"], "password": args["password"],
                "charset": "utf8mb4", "connect_timeout": args["connect_timeout"], "read_timeout": 10}
    opened = []

    def connect_once(**kwargs):
        if kwargs.get("db") != "information_schema":
            if opened:
                raise _StreamLost("the replication connection was lost")
            opened.append(True)
        return pymysql.connect(**kwargs)

    common = dict(connection_settings=settings, server_id=server_id_for(url, consumer + "#status"),
                  blocking=True, slave_heartbeat=0.5, pymysql_wrapper=connect_once, enable_logging=False,
                  only_events=[MariadbGtidEvent, GtidEvent, QueryEvent, HeartbeatLogEvent])
    conn = connect(url, autocommit=True)
    try:
        mariadb = read_server(conn).mariadb
    finally:
        conn.close()
    if position.gtid:
        stream = BinLogStreamReader(**common, is_mariadb=mariadb, auto_position=position.gtid)
    else:
        stream = BinLogStreamReader(**common, log_file=position.file, log_pos=position.pos, resume_stream=True)
    try:
        while True:
            event = stream.fetchone()
            if isinstance(event, HeartbeatLogEvent):
                return None
            if isinstance(event, (MariadbGtidEvent, GtidEvent)) or (
                    isinstance(event, QueryEvent) and event.query.strip().upper() == "BEGIN"):
                return datetime.fromtimestamp(event.timestamp, timezone.utc)
    except (_StreamLost, pymysql.Error) as exc:
        raise TransientError(f"reading the binlog after {position.serialise()}: {exc}") from None
    finally:
        stream.close()


def binlog_progress(url: str, consumer: str, position: str | None) -> SourceProgress:
    """What ``tiersync status`` shows for a binlog pipeline: the server's end, and the applied position's lag."""
    conn = connect(url, autocommit=True)
    try:
        server = read_server(conn)
    finally:
        conn.close()
    head = f"binlog {server.file}:{server.pos}" + (f" gtid {server.gtid}" if server.gtid else "")
    if not position:
        return SourceProgress(None, None, head, "nothing applied yet")
    applied = BinlogPosition.deserialise(position)
    warning = purged_problem(server, applied)
    oldest = first_pending_time(url, applied, consumer) if not warning else None
    behind = lag(server, applied, oldest)
    pending = behind.transactions_behind
    return SourceProgress(pending, oldest, head, warning)
