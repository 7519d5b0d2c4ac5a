"""Position in a PostgreSQL trigger change log, safe against transactions committing out of id order.

Rows are read in ranges of transaction ids ``[lo, hi)`` where ``hi`` was the
oldest transaction still running (``pg_snapshot_xmin``) when the range was
opened: every transaction below it had ended, so the range is complete and
never grows. Inside a range, rows are read in change-log id order, which is
commit order for changes to the same key (row locks serialise them).
``last_id`` is the last id of the current range already delivered.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.position import Position


@dataclass(frozen=True, order=True)
class PostgresLogPosition(Position):
    kind = "pglog"

    lo: int = 0
    hi: int = 0
    last_id: int = 0

    def to_text(self) -> str:
        return f"{self.lo}/{self.hi}/{self.last_id}"

    @classmethod
    def from_text(cls, text: str) -> PostgresLogPosition:
        try:
            lo, hi, last_id = (int(part) for part in text.split("/"))
        except ValueError:
            raise ValueError(f"not a PostgreSQL change-log position: {text!r} (expected lo/hi/last_id)") from None
        if not 0 <= lo <= hi or last_id < 0:
            raise ValueError(f"not a PostgreSQL change-log position: {text!r}")
        return cls(lo, hi, last_id)

    def covers(self, txid: int, row_id: int) -> bool:
        """Whether the change-log row (txid, id) is at or before this position."""
        return txid < self.lo or (txid < self.hi and row_id <= self.last_id)


@dataclass(frozen=True, order=True)
class PostgresLsnPosition(Position):
    """Position in a logical replication stream: a transaction's commit LSN and how much of it is applied.

    ``applied`` 0 means the transaction committing at ``lsn`` is applied entirely; n > 0 means its first n
    changes are (only when a pipeline lets huge transactions be split over several target transactions).
    """

    kind = "pglsn"

    lsn: int = 0
    applied: int = 0

    def to_text(self) -> str:
        return f"{self.lsn >> 32:X}/{self.lsn & 0xFFFFFFFF:X}:{self.applied}"

    @classmethod
    def from_text(cls, text: str) -> PostgresLsnPosition:
        try:
            lsn_text, _, applied = text.partition(":")
            high, low = lsn_text.split("/")
            value = cls((int(high, 16) << 32) | int(low, 16), int(applied or 0))
        except ValueError:
            raise ValueError(f"not a PostgreSQL LSN position: {text!r} (expected e.g. 16/B374D848:0)") from None
        if value.applied < 0:
            raise ValueError(f"not a PostgreSQL LSN position: {text!r}")
        return value
