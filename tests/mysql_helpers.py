"""Helpers for tests against MySQL/MariaDB: run statements, read rows."""

from __future__ import annotations

import pymysql


def _connect(url: str):
    from connectors.mysql.connection import connect_args

    args = connect_args(url)
    return pymysql.connect(host=args["host"], port=args["port"], user=args["user"], password=args["password"],
                           database=args["database"], charset="utf8mb4", autocommit=True,
                           init_command="SET time_zone = '+00:00'")


def my_exec(url: str, *statements: str, params=None) -> None:
    conn = _connect(url)
    try:
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement, params)
    finally:
        conn.close()


def my_rows(url: str, sql: str, params=None) -> list[tuple]:
    conn = _connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return [tuple(r) for r in cur.fetchall()]
    finally:
        conn.close()
