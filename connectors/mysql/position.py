"""Positions in the MySQL/MariaDB trigger change log.

A change-log id is handed out when the row is written, not at commit, so a transaction that took a low id
may commit after others with higher ids. A position therefore records ``high``, the highest id delivered,
and the *open gaps*: ids below ``high`` that were not visible when the reader passed them because the
transaction holding them may still commit (see :mod:`.reader`). Everything at or below ``high`` that is not
an open gap has been delivered.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass

from engine.position import Position

Ranges = tuple[tuple[int, int], ...]  # sorted, disjoint, inclusive (low, high) id ranges


def ranges_text(ranges: Ranges) -> str:
    return ",".join(f"{low}-{high}" if high != low else str(low) for low, high in ranges)


def parse_ranges(text: str) -> Ranges:
    ranges = []
    for part in filter(None, text.split(",")):
        low, _, high = part.partition("-")
        ranges.append((int(low), int(high or low)))
    return tuple(ranges)


def without(ranges: Ranges, ids) -> Ranges:
    """``ranges`` minus the ids in ``ids``."""
    if not ids or not ranges:
        return ranges
    ordered = sorted(ids)
    out: list[tuple[int, int]] = []
    for low, high in ranges:
        start = low
        for i in ordered[bisect_left(ordered, low):bisect_right(ordered, high)]:
            if i > start:
                out.append((start, i - 1))
            start = i + 1
        if start <= high:
            out.append((start, high))
    return tuple(out)


def count_ids(ranges: Ranges) -> int:
    return sum(high - low + 1 for low, high in ranges)


@dataclass(frozen=True)
class MysqlLogPosition(Position):
    kind = "mylog"

    high: int = 0
    open_gaps: Ranges = ()  # ids below ``high`` still waiting for the transaction that may hold them

    @property
    def floor(self) -> int:
        """Every id at or below this is delivered or will never exist."""
        return self.open_gaps[0][0] - 1 if self.open_gaps else self.high

    def to_text(self) -> str:
        return f"{self.high}|{ranges_text(self.open_gaps)}"

    @classmethod
    def from_text(cls, text: str) -> MysqlLogPosition:
        high, sep, gaps = text.partition("|")
        try:
            value = cls(int(high), parse_ranges(gaps))
        except ValueError:
            raise ValueError(f"not a MySQL change-log position: {text!r} (expected high|open gaps, "
                             f"e.g. 1042|1007,1010-1012)") from None
        ordered = all(a[1] < b[0] for a, b in zip(value.open_gaps, value.open_gaps[1:]))
        if not sep or value.high < 0 or not ordered or any(low < 1 or low > high or high >= value.high
                                                          for low, high in value.open_gaps):
            raise ValueError(f"not a MySQL change-log position: {text!r}")
        return value
