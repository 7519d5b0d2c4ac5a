"""Translate pymysql exceptions into tiersync's error classes at the connector boundary."""

from __future__ import annotations

import pymysql

from engine.errors import RowRejected, TerminalError, TiersyncError, TransientError

# lock wait timeout, deadlock, too many connections, server gone away / lost, shutdown in progress
_TRANSIENT_CODES = {1205, 1213, 1040, 2006, 2013, 2003, 1053, 1927, 4031}
_TERMINAL_HINTS = {
    1045: "check the user name and password in the database URL",
    1044: "grant the user in the URL access to the database",
    1049: "create the database or fix its name in the URL",
    1142: "grant the privileges listed above to the user in the URL",
    1227: "grant the privileges listed above to the user in the URL",
    1146: "the table is missing: create it or fix the mapping",
    1054: "the column is missing: fix the mapping or add the column",
}
# data and constraint errors: the row goes to the dead-letter table
_ROW_CODES = {1048, 1062, 1264, 1265, 1292, 1366, 1406, 1451, 1452, 1364, 3140, 4025}


def translate(exc: Exception, what: str) -> TiersyncError:
    """The tiersync error for a pymysql exception raised while doing ``what``."""
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    message = str(exc.args[1]) if len(exc.args) > 1 else (str(exc) or type(exc).__name__)
    if code in _TERMINAL_HINTS:
        return TerminalError(f"{what}: {message} — {_TERMINAL_HINTS[code]}")
    if code in _ROW_CODES:
        return RowRejected(f"{message} [{code}]")
    if code in _TRANSIENT_CODES or isinstance(exc, (pymysql.err.OperationalError, pymysql.err.InterfaceError)):
        return TransientError(f"{what}: {message}" + (f" [{code}]" if code else ""))
    return TerminalError(f"{what}: {message}" + (f" [{code}]" if code else ""))
