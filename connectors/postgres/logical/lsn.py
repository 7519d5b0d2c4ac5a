"""PostgreSQL write-ahead log positions."""

from __future__ import annotations

import re

_MAX = (1 << 64) - 1
_TEXT = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


class Lsn(int):
    """A WAL position (``pg_lsn``): an unsigned 64-bit int, printed as PostgreSQL does ("16/B374D848").

    It is an ``int``, so it orders, hashes and packs like one; arithmetic gives plain ints.
    ``Lsn(0)`` is PostgreSQL's invalid position (``0/0``), which ``START_REPLICATION``
    reads as "from the slot's confirmed position".
    """

    __slots__ = ()

    def __new__(cls, value: int = 0) -> Lsn:
        if not 0 <= value <= _MAX:
            raise ValueError(f"an LSN is an unsigned 64-bit value, not {value}")
        return super().__new__(cls, value)

    @classmethod
    def parse(cls, text: str) -> Lsn:
        """Read ``"16/B374D848"`` (either case, as ``pg_lsn::text`` prints it)."""
        match = _TEXT.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"not an LSN: {text!r} (expected e.g. '16/B374D848')")
        return cls(int(match[1], 16) << 32 | int(match[2], 16))

    def __str__(self) -> str:
        return f"{self >> 32:X}/{self & 0xFFFFFFFF:X}"

    def __repr__(self) -> str:
        return f"Lsn('{self}')"

    def __format__(self, spec: str) -> str:
        return str(self) if not spec else int.__format__(self, spec)
