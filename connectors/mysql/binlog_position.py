"""Positions in a MySQL/MariaDB binary log: after a whole transaction, plus how much of the next one is applied.

``gtid`` is the GTID position after the last applied transaction (MariaDB ``0-1-57,3-9-12`` or a MySQL
executed set); ``file:pos`` is where the next transaction starts in the binlog. A reader resumes by GTID
when it has one (it survives binlog file renumbering and server restarts) and by file and offset otherwise.
``applied`` n > 0 means the first n row changes of the transaction starting there are applied too (only
when a pipeline lets a transaction larger than a batch commit in parts).

Text form: ``binlog:<gtid>|<file>:<pos>|<applied>``, e.g. ``binlog:0-1-57|binlog.000003:2266|0``.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.position import Position

from .gtid import gtid_state


@dataclass(frozen=True)
class BinlogPosition(Position):
    kind = "binlog"

    gtid: str = ""
    file: str = ""
    pos: int = 0
    applied: int = 0

    def to_text(self) -> str:
        return f"{self.gtid}|{self.file}:{self.pos}|{self.applied}"

    @classmethod
    def from_text(cls, text: str) -> BinlogPosition:
        example = "expected <gtid>|<file>:<offset>|<applied>, e.g. 0-1-57|binlog.000003:2266|0"
        parts = text.split("|")
        if len(parts) != 3:
            raise ValueError(f"not a binlog position: {text!r} ({example})")
        gtid, place, applied = parts
        file, _, pos = place.rpartition(":")
        if not pos.isdigit() or not applied.isdigit() or (file == "" and int(pos) != 0):
            raise ValueError(f"not a binlog position: {text!r} ({example})")
        if not gtid and not file:
            raise ValueError(f"not a binlog position: {text!r} (neither a GTID nor a binlog file; {example})")
        try:
            gtid_state(gtid)
        except Exception:  # noqa: BLE001 - the library raises plain Exception for bad intervals
            raise ValueError(f"not a binlog position: {text!r} (bad GTID {gtid!r})") from None
        return cls(gtid.strip(), file, int(pos), int(applied))

    @property
    def file_offset(self) -> tuple[int, int]:
        """(file number, offset): orders positions within one server's binlog."""
        return (binlog_file_number(self.file), self.pos)


def binlog_file_number(name: str) -> int:
    """The sequence number of a binlog file (``binlog.000042`` → 42); -1 when there is none."""
    suffix = name.rpartition(".")[2]
    return int(suffix) if suffix.isdigit() else -1
