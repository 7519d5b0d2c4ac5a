"""Global transaction ids in MariaDB (``domain-server-sequence``) and MySQL (``uuid:1-5``) form.

A binlog reader's GTID position is everything applied so far:

- MariaDB: the last GTID seen in each replication domain, e.g. ``0-1-57,3-9-12`` — what a replica sends as
  ``@slave_connect_state`` to continue right after it.
- MySQL: the set of executed GTIDs, e.g. ``3e11fa47-71ca-11e1-9e33-c80aa9429562:1-57`` — what
  ``COM_BINLOG_DUMP_GTID`` (auto-position) sends to skip everything in the set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_MARIADB_GTID = re.compile(r"^(\d+)-(\d+)-(\d+)$")


def is_mariadb_state(text: str) -> bool:
    """Whether ``text`` is a (possibly empty) MariaDB GTID state rather than a MySQL GTID set."""
    return all(_MARIADB_GTID.match(part.strip()) for part in text.split(",") if part.strip())


@dataclass(frozen=True)
class MariaGtid:
    domain: int
    server: int
    sequence: int

    @classmethod
    def parse(cls, text: str) -> MariaGtid:
        match = _MARIADB_GTID.match(text.strip())
        if not match:
            raise ValueError(f"not a MariaDB GTID: {text!r} (expected domain-server-sequence, e.g. 0-1-57)")
        return cls(*(int(g) for g in match.groups()))

    def __str__(self) -> str:
        return f"{self.domain}-{self.server}-{self.sequence}"


class MariaGtidState:
    """The newest GTID per domain; ``add`` moves a domain forward."""

    def __init__(self, text: str = ""):
        self.domains: dict[int, MariaGtid] = {}
        for part in text.split(","):
            if part.strip():
                gtid = MariaGtid.parse(part)
                self.domains[gtid.domain] = gtid

    def add(self, gtid: str) -> None:
        parsed = MariaGtid.parse(gtid)
        self.domains[parsed.domain] = parsed

    def covers(self, other: MariaGtidState) -> bool:
        """Whether every domain of ``other`` is at or behind this state."""
        for domain, gtid in other.domains.items():
            mine = self.domains.get(domain)
            if mine is None or mine.sequence < gtid.sequence:
                return False
        return True

    def __str__(self) -> str:
        return ",".join(str(self.domains[d]) for d in sorted(self.domains))


class MysqlGtidSet:
    """A MySQL executed-GTID set (``uuid:1-5:7,uuid2:1-3``); the library's GtidSet does the interval work."""

    def __init__(self, text: str = ""):
        from pymysqlreplication.gtid import GtidSet

        self._set = GtidSet(text.replace("\n", "") or None)

    def add(self, gtid: str) -> None:
        from pymysqlreplication.gtid import Gtid

        self._set.merge_gtid(Gtid(gtid))

    def covers(self, other: MysqlGtidSet) -> bool:
        return all(any(theirs in mine for mine in self._set.gtids) for theirs in other._set.gtids)

    def __str__(self) -> str:
        return str(self._set)


def gtid_state(text: str) -> MariaGtidState | MysqlGtidSet:
    """The right kind of GTID position for ``text`` (MariaDB when it has no UUIDs)."""
    return MariaGtidState(text) if is_mariadb_state(text) else MysqlGtidSet(text)
