"""Rows that stay in a database's own text form from capture to apply (the "raw lane").

When a source and its target are the same kind of database, a mapping renames at
most, and every column has the same type on both sides, decoding each value into
a Python object only to encode it again for the target is wasted work. A reader
that knows the target's bulk-load text format can then hand out an
:class:`EncodedRow` as a change's ``after`` image: the complete row as one line of
that format. The engine never looks inside the line on this lane (the event's
``key`` is decoded as usual); wherever values are needed after all (a rule that
is not a plain rename, a dead letter, merging with a partial image) the row is
decoded through its :class:`RowEncoding`.

Contract: an encoded row always holds every column of its encoding (it is never
partial: an image with unchanged TOASTed values stays a dict), and it decodes to
exactly the values the reader would have produced as a dict.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .event import Row


@dataclass(frozen=True, eq=False)
class RowEncoding:
    """The layout of encoded rows: their ``format`` (which target sessions can write the line as it is),
    the column names in line order, and ``decode_line`` (line → the values, in that order)."""

    format: str
    columns: tuple[str, ...]
    decode_line: Callable[[bytes], tuple] = field(repr=False)

    def renamed(self, names: dict[str, str]) -> RowEncoding:
        """The same lines under target column names (``names``: source → target; absent names stay);
        itself when no name changes."""
        columns = tuple(names.get(c, c) for c in self.columns)
        return self if columns == self.columns else RowEncoding(self.format, columns, self.decode_line)


class EncodedRow:
    """One complete row as a line of its encoding's format."""

    __slots__ = ("line", "encoding")

    def __init__(self, line: bytes, encoding: RowEncoding):
        self.line = line
        self.encoding = encoding

    def values(self) -> Row:
        """The row as a dict of Python values."""
        return dict(zip(self.encoding.columns, self.encoding.decode_line(self.line)))

    def __repr__(self) -> str:
        return f"EncodedRow({self.line!r}, columns={self.encoding.columns!r})"


def plain(row: Any) -> Any:
    """``row`` as a dict when it is an :class:`EncodedRow`; anything else unchanged."""
    return row.values() if type(row) is EncodedRow else row
