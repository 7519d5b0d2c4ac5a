"""Positions in PostgreSQL sources: the trigger change log, and the logical replication stream.

A change-log row's sequence number is taken when the row is written, not at
commit, so ``id > last_id`` would skip a long transaction's rows, and
transaction ids are not in commit order either. Batches are therefore cut by
snapshots (as PgQ does): batch k holds the rows of transactions visible in
snapshot ``cur`` but not in the previous snapshot ``prev``, read in id order.
A transaction that committed before another is visible in every snapshot the
later one is, so it lands in the same or an earlier batch; within a batch, two
changes to the same row are in id order, which row locks make commit order
(the id sequence has CACHE 1 so that holds across sessions).
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.position import Position

NOTHING_VISIBLE = "1:1:"  # a snapshot in which no transaction is visible


@dataclass(frozen=True)
class PostgresLogPosition(Position):
    """Everything visible in ``prev`` is delivered, and of what ``cur`` adds, the rows up to ``last_id``."""

    kind = "pglog"

    prev: str = NOTHING_VISIBLE
    cur: str = NOTHING_VISIBLE
    last_id: int = 0

    def to_text(self) -> str:
        return f"{self.prev}|{self.cur}|{self.last_id}"

    @classmethod
    def from_text(cls, text: str) -> PostgresLogPosition:
        parts = text.split("|")
        if len(parts) != 3 or not all(p.count(":") == 2 for p in parts[:2]) or not parts[2].isdigit():
            raise ValueError(f"not a PostgreSQL change-log position: {text!r} (expected prev|cur|last_id, "
                             f"the snapshots as xmin:xmax:xip)")
        return cls(parts[0], parts[1], int(parts[2]))


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
