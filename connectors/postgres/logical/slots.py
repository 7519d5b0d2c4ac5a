"""SQL helpers around logical replication: wal_level, publications, pgoutput slots and their status.

They take an ordinary (not replication) psycopg connection in autocommit mode: a slot cannot be
created inside a transaction that has written anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from .lsn import Lsn
from .stream import ReplicationStreamError


@dataclass(frozen=True)
class SlotStatus:
    """A replication slot as ``pg_replication_slots`` shows it.

    ``retained_wal_bytes`` is ``pg_current_wal_lsn() - restart_lsn``: the WAL the slot keeps
    the server from recycling. ``wal_status`` is ``reserved``, ``extended``, ``unreserved`` or ``lost``.
    """

    name: str
    active: bool
    active_pid: int | None
    confirmed_flush_lsn: Lsn | None
    restart_lsn: Lsn | None
    retained_wal_bytes: int | None
    wal_status: str | None


def _table(name: str) -> sql.Identifier:
    return sql.Identifier(*name.split(".", 1))


def check_wal_level(conn: psycopg.Connection) -> None:
    """Raise :class:`ReplicationStreamError` unless the server runs with ``wal_level = logical``."""
    (level,) = conn.execute("SELECT current_setting('wal_level')").fetchone()
    if level != "logical":
        raise ReplicationStreamError(
            f"wal_level is {level!r}: logical replication needs wal_level = logical "
            "(set it in postgresql.conf and restart the server)")


def create_publication(conn: psycopg.Connection, name: str, tables: Sequence[str] | None = None) -> None:
    """``CREATE PUBLICATION`` for the given ``schema.table`` names, or for all tables when None."""
    if tables is None:
        target = sql.SQL("FOR ALL TABLES")
    else:
        target = sql.SQL("FOR TABLE {}").format(sql.SQL(", ").join(_table(t) for t in tables))
    conn.execute(sql.SQL("CREATE PUBLICATION {} {}").format(sql.Identifier(name), target))


def drop_publication(conn: psycopg.Connection, name: str) -> None:
    """``DROP PUBLICATION IF EXISTS``."""
    conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(name)))


def create_slot(conn: psycopg.Connection, name: str) -> Lsn:
    """Create a ``pgoutput`` logical slot; returns its consistent point (changes after it will be sent)."""
    (lsn,) = conn.execute("SELECT lsn::text FROM pg_create_logical_replication_slot(%s, 'pgoutput')",
                          (name,)).fetchone()
    return Lsn.parse(lsn)


def drop_slot(conn: psycopg.Connection, name: str) -> bool:
    """Drop the slot if it exists (it must not be in use); returns whether it existed."""
    row = conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                       "WHERE slot_name = %s", (name,)).fetchone()
    return row is not None


def slot_status(conn: psycopg.Connection, name: str) -> SlotStatus | None:
    """The slot's status, or None if there is no such slot."""
    row = conn.execute(
        "SELECT slot_name::text, active, active_pid, confirmed_flush_lsn::text, restart_lsn::text, "
        "pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, wal_status "
        "FROM pg_replication_slots WHERE slot_name = %s", (name,)).fetchone()
    if row is None:
        return None
    slot, active, pid, confirmed, restart, retained, wal_status = row
    return SlotStatus(slot, active, pid, Lsn.parse(confirmed) if confirmed else None,
                      Lsn.parse(restart) if restart else None, retained, wal_status)
