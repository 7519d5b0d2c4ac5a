"""The SQLite leg of the conversion table: MariaDB → SQLite and SQLite → MariaDB by triggers."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from decimal import Decimal

import pytest

from tests.helpers import cli, run_once, write_node
from tests.mysql_helpers import my_exec, my_rows

pytestmark = pytest.mark.mariadb

MY = ("CREATE TABLE t (id int PRIMARY KEY, u bigint unsigned, d decimal(20,4), db double, vc varchar(40), "
      "bl blob, dtm datetime(6), ts timestamp(6) NULL, j json, flag tinyint(1)) CHARSET utf8mb4")
LITE = ("CREATE TABLE t (id INTEGER PRIMARY KEY, u NUMERIC, d TEXT, db REAL, vc TEXT, bl BLOB, dtm TEXT, "
        "ts TEXT, j TEXT, flag INTEGER)")


def test_mariadb_to_sqlite_and_back(tmp_path, maria_databases):
    source, back = maria_databases
    lite = tmp_path / "city.db"
    sqlite3.connect(lite).execute(LITE)
    my_exec(source, MY)
    my_exec(back, MY)
    config = write_node(tmp_path / "n.yaml", {"src": source, "lite": f"sqlite:///{lite}", "back": back}, [
        {"name": "down", "source": {"database": "src", "tables": ["t"]}, "target": {"database": "lite"}},
        {"name": "up", "source": {"database": "lite", "tables": ["t"]}, "target": {"database": "back"},
         "mappings": [{"source": "t", "target": "t", "columns": {"j": {"to": "j", "cast": "json"}}}]}])
    for name in ("down", "up"):
        cli("triggers", "install", "--config", str(config), "--pipeline", name)
    my_exec(source, "INSERT INTO t VALUES (1, 9223372036854775807, -1234567890123456.1234, 0.1, '县级😀', "
                    "x'00ff', '2026-11-21 23:59:59.999999', '2026-11-21 08:00:00.25', '{\"a\": 1.10}', 1), "
                    "(2, 0, 0.0001, -1e300, '', '', '1000-01-01 00:00:00', NULL, '[]', 0), "
                    "(3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL), "
                    "(4, 18446744073709551615, 1, 1, 'too big for SQLite', '', NULL, NULL, NULL, 1)")
    run_once(config, "down")
    with sqlite3.connect(lite) as conn:
        rows = conn.execute("SELECT * FROM t ORDER BY id").fetchall()
    assert len(rows) == 3, "unsigned 2^64-1 does not fit SQLite's integers: a dead letter"
    assert "key=[4]" in cli("dead-letters", "--config", str(config), "--pipeline", "down").output
    assert rows[0][:6] == (1, 9223372036854775807, "-1234567890123456.1234", 0.1, "县级😀", b"\x00\xff")
    assert datetime.fromisoformat(rows[0][6]) == datetime(2026, 11, 21, 23, 59, 59, 999999)
    assert datetime.fromisoformat(rows[0][7]) == datetime.fromisoformat("2026-11-21T08:00:00.250000+00:00")
    assert json.loads(rows[0][8], parse_float=Decimal) == {"a": Decimal("1.10")} and rows[0][9] == 1
    assert rows[1][:6] == (2, 0, "0.0001", -1e300, "", b"")
    assert rows[2] == (3,) + (None,) * 9
    run_once(config, "up")
    assert "no dead letters" in cli("dead-letters", "--config", str(config), "--pipeline", "up").output, \
        cli("dead-letters", "--config", str(config), "--pipeline", "up").output
    assert my_rows(source, "SELECT * FROM t WHERE id < 4 ORDER BY id") == my_rows(back, "SELECT * FROM t ORDER BY id")
