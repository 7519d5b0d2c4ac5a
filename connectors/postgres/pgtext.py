"""Values in PostgreSQL's text output format (what pgoutput sends) turned into Python values.

The walsender is started with fixed DateStyle, IntervalStyle, extra_float_digits,
bytea_output and TimeZone (see :data:`WALSENDER_OPTIONS`), so the text is
unambiguous. Values are decoded the same way the trigger path decodes its JSON
images: integers, exact decimals, floats, booleans, dates and times, bytes,
uuids and JSON documents become Python values; anything Python cannot hold
(infinite dates, intervals with months, enum and network types …) stays as
PostgreSQL text, which the target parses.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg
from psycopg import pq

from .connection import parse_image
from .dialect import json_document

WALSENDER_OPTIONS = ("-c datestyle=ISO,YMD -c intervalstyle=postgres -c extra_float_digits=1 "
                     "-c bytea_output=hex -c timezone=UTC")

_BOOL = {"t": True, "f": False}


def _keep_text(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError:
            return text  # infinity, BC dates, 24:00 …: the target parses PostgreSQL's text
    return convert


def _timestamp(text: str) -> Any:
    return datetime.fromisoformat(text)


def _bytea(text: str) -> bytes:
    return bytes.fromhex(text[2:])


def _json(text: str) -> Any:
    return json_document(parse_image(text))


_SCALARS: dict[int, Callable[[str], Any] | None] = {
    16: _BOOL.__getitem__,           # bool
    20: int, 21: int, 23: int, 26: int,  # int8, int2, int4, oid
    25: None, 1043: None, 1042: None, 18: None, 19: None,  # text, varchar, bpchar, "char", name
    700: float, 701: float,          # float4, float8
    1700: Decimal,                   # numeric (NaN, Infinity included)
    1082: _keep_text(date.fromisoformat),
    1083: _keep_text(time.fromisoformat),
    1114: _keep_text(_timestamp), 1184: _keep_text(_timestamp),
    17: _bytea,
    114: _json, 3802: _json,
    2950: UUID,
    1186: None,                      # interval: months do not fit a timedelta; the target parses the text
}


class TextDecoders:
    """Per-type decoders; array and other types use psycopg's own text loaders."""

    def __init__(self, conn: psycopg.Connection):
        self.conn = conn
        self._cache: dict[int, Callable[[str], Any] | None] = dict(_SCALARS)

    def for_type(self, oid: int) -> Callable[[str], Any] | None:
        if oid not in self._cache:
            self._cache[oid] = self._from_psycopg(oid)
        return self._cache[oid]

    def _from_psycopg(self, oid: int) -> Callable[[str], Any] | None:
        loader_class = self.conn.adapters.get_loader(oid, pq.Format.TEXT)
        if loader_class is None or loader_class.__name__ in ("TextLoader", "UnknownLoader"):
            return None
        loader = loader_class(oid, self.conn)

        def load(text: str) -> Any:
            try:
                return loader.load(text.encode())
            except (psycopg.DataError, ValueError):
                return text
        return load
