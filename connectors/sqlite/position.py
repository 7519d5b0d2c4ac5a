"""Position in a SQLite trigger change log.

SQLite has one writer at a time, and a change-log id is taken inside the
writing transaction, so ids are handed out in commit order: ``id > last_id``
never skips a change that commits later.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.position import Position


@dataclass(frozen=True, order=True)
class SqliteLogPosition(Position):
    kind = "sqlitelog"

    last_id: int = 0

    def to_text(self) -> str:
        return str(self.last_id)

    @classmethod
    def from_text(cls, text: str) -> SqliteLogPosition:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"not a SQLite change-log position: {text!r}") from None
        if value < 0:
            raise ValueError(f"not a SQLite change-log position: {text!r}")
        return cls(value)
