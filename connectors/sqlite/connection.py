"""Opening SQLite databases named by ``sqlite:///path`` URLs."""

from __future__ import annotations

import sqlite3
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import unquote
from uuid import UUID

from engine.errors import RowRejected, TerminalError, TiersyncError, TransientError
from engine.jsontext import dumps_exact

# SQLite stores text, integers, reals and blobs; everything else is written as its canonical text.
for _type in (Decimal, UUID, timedelta):
    sqlite3.register_adapter(_type, str)
for _type in (datetime, date, time):
    sqlite3.register_adapter(_type, lambda v: v.isoformat())


sqlite3.register_adapter(dict, dumps_exact)
sqlite3.register_adapter(list, dumps_exact)


def path_of(url: str) -> str:
    """The file of a SQLite URL, as SQLAlchemy reads them: ``sqlite:///relative.db``, ``sqlite:////absolute.db``."""
    rest = url.split(":", 1)[1]
    if not rest.startswith("///"):
        raise TerminalError(f"a SQLite URL is sqlite:///relative/path.db or sqlite:////absolute/path.db, not {url}")
    return unquote(rest[3:])


def connect(url: str, *, must_exist: bool = True) -> sqlite3.Connection:
    path = path_of(url)
    if must_exist and not Path(path).exists():
        raise TerminalError(f"SQLite database {path} does not exist — create it or fix the URL {url}")
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA busy_timeout=30000")
    except sqlite3.Error as exc:
        raise translate(exc, f"cannot open {path}") from None
    return conn


def translate(exc: Exception, what: str) -> TiersyncError:
    message = str(exc)
    if isinstance(exc, sqlite3.IntegrityError):
        return RowRejected(message)
    if isinstance(exc, sqlite3.OperationalError):
        lowered = message.lower()
        if "locked" in lowered or "busy" in lowered or "disk i/o" in lowered:
            return TransientError(f"{what}: {message}")
        if "no such" in lowered or "has no column" in lowered:
            return TerminalError(f"{what}: {message} — fix the mapping or the table")
    if isinstance(exc, (sqlite3.InterfaceError, sqlite3.DataError, OverflowError)):
        return RowRejected(message)
    return TerminalError(f"{what}: {message}")
