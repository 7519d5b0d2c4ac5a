"""The DBA's side of logical capture: the publication and slot a pipeline needs, their status, start-up checks."""

from __future__ import annotations

import psycopg

from engine.event import TableId
from engine.seams import CapturedTable

from .connection import connect
from .dialect import literal, qualified, quote
from .errors import translate
from .logical import SlotStatus, slot_status

_SLOT_HERE = "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s AND database = current_database()"


class PostgresSlotAdmin:
    """Statements to review and run for one pipeline's publication and replication slot."""

    def __init__(self, url: str, slot: str, publication: str):
        self.url, self.slot, self.publication = url, slot, publication

    def _query(self, sql: str, params=()) -> list[tuple]:
        with connect(self.url, autocommit=True) as conn:
            try:
                return conn.execute(sql, params).fetchall()
            except psycopg.Error as exc:
                raise translate(exc, "reading replication state") from None

    def create_statements(self, tables: list[TableId]) -> list[str]:
        names = ", ".join(qualified(t) for t in tables)
        exists = self._query("SELECT 1 FROM pg_publication WHERE pubname = %s", (self.publication,))
        verb = "ALTER PUBLICATION {} SET TABLE {}" if exists else "CREATE PUBLICATION {} FOR TABLE {}"
        statements = [verb.format(quote(self.publication), names)]
        if not self._query(_SLOT_HERE, (self.slot,)):
            statements.append(f"SELECT pg_create_logical_replication_slot({literal(self.slot)}, 'pgoutput')")
        return statements

    def drop_statements(self) -> list[str]:
        statements = []
        if self._query(_SLOT_HERE, (self.slot,)):
            statements.append(f"SELECT pg_drop_replication_slot({literal(self.slot)})")
        statements.append(f"DROP PUBLICATION IF EXISTS {quote(self.publication)}")
        return statements

    def execute(self, statements: list[str]) -> None:
        # one by one in autocommit: a slot cannot be created in a transaction that has written
        with connect(self.url, autocommit=True) as conn:
            for statement in statements:
                try:
                    conn.execute(statement)
                except psycopg.Error as exc:
                    raise translate(exc, f"running {statement.split('(')[0]}") from None

    def status(self) -> SlotStatus | None:
        with connect(self.url, autocommit=True) as conn:
            try:
                return slot_status(conn, self.slot)
            except psycopg.Error as exc:
                raise translate(exc, "reading the slot's status") from None


def logical_capture_problems(conn: psycopg.Connection, slot: str, publication: str,
                             tables: list[CapturedTable]) -> list[str]:
    """Everything that stops logical capture of ``tables``, each with the statement or setting that fixes it."""
    problems = []
    (level,) = conn.execute("SELECT current_setting('wal_level')").fetchone()
    if level != "logical":
        problems.append(f"wal_level is {level!r}; logical capture needs wal_level = logical in postgresql.conf "
                        f"(then restart the server)")
    row = conn.execute("SELECT plugin, database FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
    here = conn.info.dbname
    if row is not None and row[1] != here:
        problems.append(f"replication slot {slot} belongs to database {row[1]!r}, not {here!r}; "
                        f"name another slot with `slot:` in the pipeline's source")
    elif row is None:
        problems.append(f"replication slot {slot} does not exist; review and create it with "
                        f"`tiersync slot sql` / `tiersync slot create`")
    elif row[0] != "pgoutput":
        problems.append(f"replication slot {slot} uses plugin {row[0]!r}, not pgoutput; drop it or name another slot")
    published = {TableId(s, t) for s, t in conn.execute(
        "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (publication,)).fetchall()}
    if not conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,)).fetchone():
        problems.append(f"publication {publication} does not exist; `tiersync slot create` makes it")
    else:
        for table in tables:
            if table.info.id not in published:
                problems.append(f"{table.info.id} is not in publication {publication}: "
                                f"ALTER PUBLICATION {quote(publication)} ADD TABLE {qualified(table.info.id)}")
    for table in tables:
        if not table.key:
            continue  # replicated as history (mode: append): inserts carry everything; PostgreSQL itself
            # refuses UPDATE and DELETE on a published table that has no replica identity
        (identity,) = conn.execute("SELECT relreplident FROM pg_class WHERE oid = %s::regclass",
                                   (qualified(table.info.id),)).fetchone()
        uses_primary_key = table.key == table.info.primary_key and table.info.primary_key
        if identity == "n" or (identity == "d" and not uses_primary_key):
            problems.append(f"{table.info.id} has REPLICA IDENTITY {'NOTHING' if identity == 'n' else 'DEFAULT'} "
                            f"without a usable primary key, so updates and deletes carry no old key: "
                            f"ALTER TABLE {qualified(table.info.id)} REPLICA IDENTITY FULL")
    return problems
