"""Translate psycopg exceptions into tiersync's error classes at the connector boundary."""

from __future__ import annotations

import psycopg

from engine.errors import RowRejected, TerminalError, TiersyncError, TransientError

# 55006: object in use (e.g. a replication origin still held by a session that is going away)
_TRANSIENT_STATES = {"40001", "40P01", "55P03", "55006", "57P01", "57P02", "57P03", "53300",
                     "08000", "08003", "08006"}
_TERMINAL_HINTS = {
    "28P01": "check the user name and password in the database URL",
    "28000": "check pg_hba.conf and the user in the database URL",
    "3D000": "create the database or fix its name in the URL",
    "42501": "grant the privileges listed above to the user in the URL",
    "42P01": "the table is missing: create it or fix the mapping",
    "42703": "the column is missing: fix the mapping or add the column",
    "42P10": "the target key needs a primary key or unique constraint on those columns",
    "3F000": "the schema is missing: create it or fix the name",
}


def translate(exc: Exception, what: str) -> TiersyncError:
    """The tiersync error for a psycopg exception raised while doing ``what``."""
    state = getattr(getattr(exc, "diag", None), "sqlstate", None) or getattr(exc, "sqlstate", None)
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if state in _TERMINAL_HINTS:
        return TerminalError(f"{what}: {message} — {_TERMINAL_HINTS[state]}")
    if state and (state.startswith("22") or state.startswith("23")):
        return RowRejected(f"{message} [{state}]")
    if state in _TRANSIENT_STATES or (state and state.startswith("08")):
        return TransientError(f"{what}: {message}")
    if isinstance(exc, psycopg.OperationalError):
        lowered = message.lower()
        if "password" in lowered or "authentication" in lowered or "does not exist" in lowered:
            return TerminalError(f"{what}: {message}")
        return TransientError(f"{what}: {message}")
    if isinstance(exc, (psycopg.InterfaceError,)):
        return TransientError(f"{what}: {message}")
    return TerminalError(f"{what}: {message}" + (f" [{state}]" if state else ""))
