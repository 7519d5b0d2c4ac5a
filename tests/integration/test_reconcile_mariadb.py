"""MariaDB's reconcile SQL (connectors/mysql/reconcile_sql.py) agrees with the reference and with PostgreSQL."""

from __future__ import annotations

from decimal import Decimal

import psycopg

from connectors.mysql import reconcile_sql as maria
from connectors.postgres.connector import PostgresConnector
from engine.event import TableId
from engine.reconcile import normalise
from engine.schema import ColumnInfo, TableInfo
from engine.seams import ChecksumSpec, CompareColumn
from tests.helpers import pg_exec

MARIA_DDL = """CREATE TABLE v (id INT PRIMARY KEY, label VARCHAR(50), price DECIMAL(30,9), ratio DOUBLE, flt FLOAT,
    active TINYINT(1), seen DATETIME(6), born DATE, tm TIME(6), raw VARBINARY(16))"""
PG_DDL = """CREATE TABLE v (id int PRIMARY KEY, label text, price numeric(30,9), ratio double precision, flt real,
    active boolean, seen timestamp, born date, tm time, raw bytea)"""
ROWS = [
    (1, "a,b\\c ", Decimal("1.500000000"), 0.1 + 0.2, 1.1, True, "2024-03-01 12:00:00.250000", "2024-03-01",
     "23:59:59.500000", b"\x00\xff"),
    (2, "", Decimal("-0.000000001"), -1e-310, -3.5, False, "0999-01-01 00:00:00", "0999-01-01", "00:00:00", b""),
    (3, None, None, None, None, None, None, None, None, None),
    (4, "北京 ", Decimal("12345678901234567890.123456789"), 1e300, 3.4e38, True, "2038-01-19 03:14:08.000001",
     "9999-12-31", "12:00:00.000001", b"\xde\xad"),
    (5, "x", Decimal("100"), 2.0 ** -1022, 0.0, False, "1970-01-01 00:00:00", "1970-01-01", "01:02:03", b"z"),
    (6, "y", Decimal("-42.420000000"), -123456.789e-5, 1e-30, True, "2024-12-31 23:59:59.999999", "2024-02-29",
     "13:14:15.1", b"\x01"),
]


def _maria_info(conn) -> TableInfo:
    with conn.cursor() as cur:
        cur.execute("SELECT column_name, column_type FROM information_schema.columns WHERE table_schema = DATABASE() "
                    "AND table_name = 'v' ORDER BY ordinal_position")
        return TableInfo(TableId(None, "v"), tuple(ColumnInfo(n, t) for n, t in cur.fetchall()), ("id",))


def _spec(info: TableInfo, kind_of) -> ChecksumSpec:
    key = CompareColumn("id", info.column("id").type, "int")
    columns = tuple(CompareColumn(c.name, c.type, kind_of(c.type)) for c in info.columns if c.name != "id")
    return ChecksumSpec(info, (key,), columns)


def test_mariadb_normalisation_agrees_with_the_reference_and_postgresql(maria_server, maria_databases, pg_databases):
    database = maria_databases[0].rsplit("/", 1)[1]
    conn = maria_server.connect(database)
    pg, _ = pg_databases
    try:
        with conn.cursor() as cur:
            for statement in maria.SESSION_SQL:
                cur.execute(statement, ())
            cur.execute(MARIA_DDL, ())
            cur.executemany("INSERT INTO v VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", ROWS)
        info = _maria_info(conn)
        spec = _spec(info, maria.column_kind)
        assert [c.kind for c in spec.columns] == ["text", "decimal", "float", "float", "bool", "timestamp", "date",
                                                  "time", "bytes"]
        # each value, normalised by MariaDB, equals the reference normalisation of the value pymysql reads
        select = ", ".join(maria.normalised_sql(f"v.{maria.quote(c.name)}", c.type, c.kind) for c in spec.columns)
        names = ", ".join(maria.quote(c.name) for c in spec.columns)
        with conn.cursor() as cur:
            cur.execute(f"SELECT id, {select} FROM v ORDER BY id", ())
            in_sql = cur.fetchall()
            cur.execute(f"SELECT id, {names} FROM v ORDER BY id", ())
            values = cur.fetchall()
        for sql_row, value_row in zip(in_sql, values):
            expected = tuple(normalise(c.kind, v) for c, v in zip(spec.columns, value_row[1:]))
            assert tuple(sql_row[1:]) == expected, value_row
        # the same rows in PostgreSQL give the same bucket sums; one changed row shows in its bucket only
        pg_exec(pg, PG_DDL)
        with psycopg.connect(pg, autocommit=True) as pg_conn:
            pg_conn.cursor().executemany("INSERT INTO v VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", ROWS)
        connector = PostgresConnector(pg)
        pg_spec = _spec(connector.describe(TableId("public", "v")), connector.column_kind)
        assert [c.kind for c in pg_spec.columns] == [c.kind for c in spec.columns]
        checksummer = connector.checksummer(pg_spec)
        try:
            pg_sums = {b: (s.count, s.total) for b, s in checksummer.bucket_sums(2, None, 0).items()}
        finally:
            checksummer.close()

        def maria_sums():
            with conn.cursor() as cur:
                cur.execute(maria.bucket_sums_sql(spec, 2, None, None), ())
                return {int(b): (n, int(total)) for b, n, total in cur.fetchall()}

        assert maria_sums() == pg_sums
        with conn.cursor() as cur:
            cur.execute("UPDATE v SET label = 'a,b\\\\c' WHERE id = 1", ())  # the trailing space goes
        changed = maria_sums()
        assert [b for b in pg_sums if changed[b] != pg_sums[b]] == [1]
        with conn.cursor() as cur:
            cur.execute(maria.row_hashes_sql(spec, 1, 2), (1,))
            assert sorted(r[2] for r in cur.fetchall()) == [1, 5]  # the keys of bucket 1 (id & 3 = 1)
    finally:
        conn.close()
