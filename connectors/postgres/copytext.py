"""pgoutput tuples as lines of COPY text format: PostgreSQL → PostgreSQL rows that are never decoded.

pgoutput sends each column in PostgreSQL's text output form, which is exactly what
``COPY … FROM STDIN`` (text format) reads back through the same type's input
function. A tuple becomes one COPY line by escaping backslash, tab, newline and
carriage return and writing ``\\N`` for NULL; nothing is parsed into Python values
(see :mod:`engine.encoded`). :func:`line_decoder` turns such a line back into the
values :mod:`.pgtext` would have produced, for the rare places that need them.

The walsender's output settings (:data:`.pgtext.WALSENDER_OPTIONS`: ISO dates, UTC,
hex bytea, exact floats) are read back unambiguously by any target session. Types
whose text depends on the database or its locale are not sent this way
(:data:`NOT_PORTABLE_TYPES`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from struct import Struct
from struct import error as StructError
from typing import Any

from .logical import PgOutputError

try:
    from ._copytext import tuple_line as _compiled
except ImportError:  # built without a C compiler: the same in Python
    _compiled = None

COPY_TEXT = "postgresql-copy-text"  # the format name engine.encoded rows carry

# money (locale), and the reg* types (object names resolved in each database), with their arrays
NOT_PORTABLE_TYPES = frozenset({790, 791, 24, 1008, 2202, 2207, 2203, 2208, 2204, 2209, 2205, 2210, 2206, 2211,
                                3734, 3735, 3769, 3770, 4089, 4090, 4096, 4097, 4191, 4192})

_U16 = Struct("!H").unpack_from
_I32 = Struct("!i").unpack_from
_SPECIAL = b"\\\t\n\r"  # the bytes COPY text escapes
_UNESCAPE = re.compile(rb"\\(.)", re.DOTALL)
_UNESCAPED = {b"\\": b"\\", b"t": b"\t", b"n": b"\n", b"r": b"\r", b"b": b"\b", b"f": b"\f", b"v": b"\v"}
NULL = b"\\N"


def escape(value: bytes) -> bytes:
    """One value's text as a COPY text field."""
    return value.replace(b"\\", b"\\\\").replace(b"\t", b"\\t").replace(b"\n", b"\\n").replace(b"\r", b"\\r")


def tuple_line(data: bytes, pos: int) -> tuple[bytes | None, list[bytes | None]]:
    """The pgoutput TupleData at ``pos`` as one COPY text line (without its newline) and the raw values
    (bytes, None for NULL). The line is None when the tuple cannot be written whole: an unchanged TOASTed
    value (kind 'u') or a value in binary format (kind 'b'); values then holds the columns before it.

    Raises :class:`~.logical.PgOutputError` on a truncated or malformed tuple. Runs in C (``_copytext.c``)
    where that was built, as :func:`tuple_line_python` otherwise (tests/unit/test_copytext.py holds them equal).
    """
    if _compiled is None:
        return tuple_line_python(data, pos)
    try:
        return _compiled(data, pos)
    except ValueError as exc:
        raise PgOutputError(f"malformed TupleData: {exc}") from None


def tuple_line_python(data: bytes, pos: int) -> tuple[bytes | None, list[bytes | None]]:
    """:func:`tuple_line` in Python: the reference, and what runs where no C compiler built the extension."""
    try:
        (count,) = _U16(data, pos)
        pos += 2
        values: list[bytes | None] = []
        append = values.append
        nulls = False
        for _ in range(count):
            kind = data[pos]
            if kind == 116:  # 't'
                length = _I32(data, pos + 1)[0]
                if length < 0:
                    raise PgOutputError(f"malformed TupleData: a column of length {length}")
                end = pos + 5 + length
                append(data[pos + 5:end])
                pos = end
            elif kind == 110:  # 'n'
                append(None)
                nulls = True
                pos += 1
            elif kind == 117 or kind == 98:  # 'u', 'b'
                return None, values
            else:
                raise PgOutputError(f"unknown TupleData column kind {chr(kind)!r}")
    except (IndexError, StructError) as exc:
        raise PgOutputError(f"malformed TupleData: {exc}") from None
    if pos > len(data):
        raise PgOutputError("TupleData runs past the end of the message")
    if not nulls:
        line = b"\t".join(values)
        if len(line.translate(None, _SPECIAL)) == len(line) - count + 1:  # only the separators: nothing to escape
            return line, values
    return b"\t".join([NULL if v is None else escape(v) for v in values]), values


def _unescape(field: bytes) -> bytes:
    return _UNESCAPE.sub(lambda m: _UNESCAPED.get(m.group(1), m.group(1)), field)


def line_decoder(decoders: Sequence[Callable[[str], Any] | None]) -> Callable[[bytes], tuple]:
    """line → its values, each column's text decoded by its decoder (None: kept as text)."""
    decoders = tuple(decoders)

    def decode(line: bytes) -> tuple:
        fields = line.split(b"\t")
        if len(fields) != len(decoders):
            raise ValueError(f"a COPY line of {len(fields)} fields for {len(decoders)} columns")
        values = []
        for field, convert in zip(fields, decoders):
            if field == NULL:
                values.append(None)
                continue
            text = (_unescape(field) if b"\\" in field else field).decode()
            values.append(text if convert is None else convert(text))
        return tuple(values)
    return decode
