"""Opening SQLite databases named by ``sqlite:///path`` URLs."""

from __future__ import annotations

import json
import sqlite3
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import unquote
from uuid import UUID

from engine.apply import json_default
from engine.errors import RowRejected, TerminalError, TiersyncError, TransientError

# SQLite stores text, integers, reals and blobs; everything else is written as its canonical text.
for _type in (Decimal, UUID, timedelta):
    sqlite3.register_adapter(_type, str)
for _type in (datetime, date, time):
    sqlite3.register_adapter(_type, lambda v: v.isoformat())


def _json_text(value) -> str:
    """JSON text of a document; numbers held as Decimal (1.10, 12345678901234567890.5) are written exactly."""
    try:
        return json.dumps(value, default=_plain_default, ensure_ascii=False)
    except _HasDecimal:
        return _exact_json(value)


class _HasDecimal(Exception):
    pass


def _plain_default(value):
    if isinstance(value, Decimal) and value.is_finite():
        raise _HasDecimal  # json.dumps can only write it as a string or a float: take the exact path
    return json_default(value)


def _exact_json(value) -> str:
    if isinstance(value, Decimal) and value.is_finite():
        return str(value).lower()  # 1.10 stays 1.10; 1E+22 is written 1e+22
    if isinstance(value, dict):
        return "{" + ", ".join(json.dumps(k if isinstance(k, str) else json.dumps(k), ensure_ascii=False) + ": "
                               + _exact_json(v) for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple, set, frozenset)):
        return "[" + ", ".join(_exact_json(v) for v in value) + "]"
    return json.dumps(value, default=json_default, ensure_ascii=False)


sqlite3.register_adapter(dict, _json_text)
sqlite3.register_adapter(list, _json_text)


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
