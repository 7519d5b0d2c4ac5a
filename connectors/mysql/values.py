"""How MySQL/MariaDB values travel: as JSON row images out of a source, as pymysql literals into a target.

Reading (change-log images and full-load chunks are the same ``JSON_OBJECT``):

=====================  ==========================  =====================================================
column type            image expression            Python value
=====================  ==========================  =====================================================
integers, year         the value                   int (unsigned 64-bit kept exact)
tinyint(1) / boolean   the value                   int 0/1 (a boolean target column takes it as one)
decimal(p,s)           the value (exact text)      Decimal with its scale
float, double          the value (shortest text)   float
char/varchar/text,     the value                   str (utf8mb4: Chinese, 4-byte characters)
enum, set
binary/varbinary/blob  HEX(value)                  bytes
bit(n)                 value + 0                   int
date, datetime(n)      the value                   date / naive datetime; zero date → NULL (see below)
timestamp(n)           UNIX_TIMESTAMP(value)       aware datetime in UTC (independent of any time zone)
time(n)                the value                   time when within a day, else the MySQL text
json                   the document                dict/list/str/number (numbers exact)
generated columns      left out                    never written to a target
=====================  ==========================  =====================================================

Zero dates (``0000-00-00``, and dates with a zero month or day) become NULL with a counted warning; with
``?zero_dates=keep`` in the source URL they travel as their text instead, and a target that cannot hold
them refuses the row into its dead-letter table with the reason.

Writing: pymysql escapes each value; tiersync's encoders add aware datetimes converted to UTC (the apply
session's time zone), JSON documents as exact JSON text, and refuse NaN and infinity. Per-column writers
refuse, rather than let the server silently round, a decimal with more fractional digits than the
column's scale and a time with more fractional digits than the column's precision.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any, Callable
from uuid import UUID

from pymysql import converters

from engine.jsontext import dumps_exact

log = logging.getLogger(__name__)

ZERO_DATES: Counter = Counter()  # (table, column) → zero dates turned into NULL since the process started

_BINARY = re.compile(r"^(binary|varbinary|tinyblob|blob|mediumblob|longblob)\b")
_DECIMAL = re.compile(r"^(decimal|numeric)\((\d+),(\d+)\)")
_FLOAT = re.compile(r"^(float|double|real)\b")
_TEMPORAL = re.compile(r"^(datetime|timestamp|time)(\((\d)\))?")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def base_type(column_type: str) -> str:
    return re.split(r"[ (]", column_type.lower(), maxsplit=1)[0]


def image_expression(column_type: str, ref: str) -> str:
    """The SQL expression that puts a column's value into a JSON row image."""
    kind = base_type(column_type)
    if _BINARY.match(column_type.lower()):
        return f"HEX({ref})"
    if kind == "bit":
        return f"({ref} + 0)"
    if kind == "timestamp":  # UNIX_TIMESTAMP of the zero timestamp is NULL under a strict sql_mode
        return f"IF({ref} = 0, 0, UNIX_TIMESTAMP({ref}))"
    return ref


# ---------------------------------------------------------------- reading

def json_document(value: Any) -> Any:
    """A JSON column's document: numbers stay Decimal only where a float would change them."""
    if isinstance(value, Decimal):
        as_float = float(value)
        return as_float if repr(as_float) == str(value) else value
    if isinstance(value, list):
        return [json_document(v) for v in value]
    if isinstance(value, dict):
        return {k: json_document(v) for k, v in value.items()}
    return value


def _is_zero_date(text: str) -> bool:
    return text[:4] == "0000" or text[5:7] == "00" or text[8:10] == "00"


def _zero_date(table: str, column: str, text: str, keep: bool) -> Any:
    if keep:
        return text
    ZERO_DATES[(table, column)] += 1
    count = ZERO_DATES[(table, column)]
    if count == 1 or count % 1000 == 0:
        log.warning("%s.%s holds the zero date %r: replicated as NULL (%d so far; ?zero_dates=keep in the "
                    "source URL sends the text instead)", table, column, text, count)
    return None


def value_decoder(column_type: str, table: str, column: str, keep_zero_dates: bool = False
                  ) -> Callable[[Any], Any] | None:
    """How a value of ``column_type`` in a JSON row image becomes its Python value (None: as it is)."""
    kind = base_type(column_type)
    lowered = column_type.lower()
    if _BINARY.match(lowered):
        return bytes.fromhex
    if _DECIMAL.match(lowered) or kind in ("decimal", "numeric"):
        return lambda v: v if isinstance(v, Decimal) else Decimal(str(v))
    if _FLOAT.match(lowered):
        return float
    if kind == "json":
        return json_document
    if kind in ("date", "datetime"):
        parse = date.fromisoformat if kind == "date" else datetime.fromisoformat

        def temporal(v: Any) -> Any:
            if _is_zero_date(v):
                return _zero_date(table, column, v, keep_zero_dates)
            try:
                return parse(v)
            except ValueError:
                return v  # e.g. a date MySQL allowed with ALLOW_INVALID_DATES: the target decides
        return temporal
    if kind == "timestamp":
        def instant(v: Any) -> Any:
            if v == 0:  # UNIX_TIMESTAMP of the zero timestamp; 1970-01-01 00:00:00 itself is out of range
                return _zero_date(table, column, "0000-00-00 00:00:00", keep_zero_dates)
            micros = int((Decimal(v) * 1_000_000).to_integral_value())
            return _EPOCH + timedelta(microseconds=micros)
        return instant
    if kind == "time":
        def clock(v: Any) -> Any:
            try:
                return time.fromisoformat(v)
            except ValueError:
                return v  # negative or over 24 hours: MySQL's interval-like TIME stays text
        return clock
    return None


# ---------------------------------------------------------------- writing

def _escape_float(value: float, mapping=None) -> str:
    if not math.isfinite(value):
        raise ValueError(f"{value} cannot be stored in MySQL/MariaDB")
    return converters.escape_float(value, mapping)


def _escape_decimal(value: Decimal, mapping=None) -> str:
    if not value.is_finite():
        raise ValueError(f"{value} cannot be stored in MySQL/MariaDB")
    return format(value, "f")


def _escape_datetime(value: datetime, mapping=None) -> str:
    if value.tzinfo is not None:  # the apply session runs in UTC
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return converters.escape_datetime(value, mapping)


def _escape_text(value: str) -> str:
    return "'" + converters.escape_string(value) + "'"  # the apply session never sets NO_BACKSLASH_ESCAPES


def _escape_document(value: Any) -> str:
    return _escape_text(dumps_exact(value))


_LITERALS: dict[type, Callable[[Any], str]] = {
    int: str,
    str: _escape_text,
    type(None): lambda v: "NULL",
    bool: lambda v: "1" if v else "0",
    float: _escape_float,
    Decimal: _escape_decimal,
    datetime: _escape_datetime,
    date: lambda v: f"'{v.isoformat()}'",
    time: lambda v: converters.escape_time(v),
    timedelta: lambda v: converters.escape_timedelta(v),
    bytes: lambda v: f"X'{v.hex()}'",
    bytearray: lambda v: f"X'{bytes(v).hex()}'",
    memoryview: lambda v: f"X'{bytes(v).hex()}'",
    UUID: lambda v: f"'{v}'",
    dict: _escape_document,
    list: _escape_document,
    tuple: _escape_document,
}


def literal(value: Any) -> str:
    """The SQL literal of one value, as the module docstring says (ValueError: it has none)."""
    write = _LITERALS.get(type(value))
    if write is None:
        if isinstance(value, (dict, list, tuple)):
            return _escape_document(value)
        return _escape_text(str(value))  # enums, IP addresses …: their text
    return write(value)


def row_literal(row) -> str:
    """``(v1, v2, …)`` for a multi-row VALUES list: one call per row instead of one per value and type."""
    literals = _LITERALS
    try:
        return "(" + ",".join([literals[type(v)](v) for v in row]) + ")"
    except KeyError:
        return "(" + ",".join([literal(v) for v in row]) + ")"


def use_tiersync_encoders(conn) -> None:
    """Make pymysql's own parameter escaping on ``conn`` (deletes, dead letters) write values like :func:`literal`."""
    conn.encoders = dict(converters.encoders) | {float: _escape_float, Decimal: _escape_decimal,
                                                 datetime: _escape_datetime}
    escape = conn.escape

    def escape_value(value: Any, mapping=None) -> str:
        if type(value) in (list, dict, tuple, UUID):
            return literal(value)
        return escape(value, mapping)
    conn.escape = escape_value


def value_writer(column_type: str) -> Callable[[Any], Any] | None:
    """A check or conversion a target column needs before pymysql escapes its value (None: none)."""
    lowered = column_type.lower()
    match = _DECIMAL.match(lowered)
    if match:
        scale = int(match.group(3))

        def exact_decimal(v: Any) -> Any:
            if isinstance(v, (Decimal, float, str)):
                number = v if isinstance(v, Decimal) else Decimal(str(v))
                if number.is_finite():
                    _, digits, exponent = number.as_tuple()
                    extra = -scale - exponent  # digits past the column's scale
                    if extra > 0 and any(digits[-extra:]):
                        raise ValueError(f"{v} has more than {scale} decimal places ({column_type} would round it)")
            return v
        return exact_decimal
    match = _TEMPORAL.match(lowered)
    if match:
        digits = int(match.group(3) or 0)
        unit = 10 ** (6 - digits)
        moment = match.group(1) != "time"

        def exact_fraction(v: Any) -> Any:
            if moment and isinstance(v, str):  # ISO text (SQLite, casts): MySQL takes neither 'T' nor an offset
                try:
                    v = datetime.fromisoformat(v)
                except ValueError:
                    return v  # the server decides
            if isinstance(v, (datetime, time)) and v.microsecond % unit:
                raise ValueError(f"{v} has more fractional digits than {column_type} holds")
            return v
        return exact_fraction
    if base_type(lowered) == "json":
        return lambda v: dumps_exact(v) if isinstance(v, (str, int, float, Decimal, bool)) else v
    return None
