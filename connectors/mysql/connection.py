"""Opening MySQL/MariaDB connections from ``mysql://`` and ``mariadb://`` URLs (pymysql), with failures
turned into tiersync errors."""

from __future__ import annotations

from datetime import timezone
from urllib.parse import parse_qsl, unquote, urlsplit

import pymysql

from engine.config import redact_url

from .errors import translate


def connect_args(url: str) -> dict:
    """pymysql keyword arguments for ``mysql://user:password@host:port/database?option=value``."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("mysql", "mariadb"):
        raise ValueError(f"not a MySQL/MariaDB URL: {redact_url(url)}")
    args: dict = {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 3306,
        "user": unquote(parts.username) if parts.username else "root",
        "password": unquote(parts.password) if parts.password else "",
        "database": unquote(parts.path.lstrip("/")) or None,
        "charset": "utf8mb4",
        "connect_timeout": 10,
    }
    for key, value in parse_qsl(parts.query):
        if key == "unix_socket":
            args["unix_socket"] = value
        elif key in ("connect_timeout", "read_timeout", "write_timeout"):
            args[key] = int(value)
        elif key == "zero_dates":  # read by zero_dates_kept, not a connection argument
            if value not in ("null", "keep"):
                raise ValueError(f"zero_dates must be null or keep, not {value!r}, in {redact_url(url)}")
        else:
            raise ValueError(f"unknown option {key!r} in {redact_url(url)}")
    return args


def zero_dates_kept(url: str) -> bool:
    """``?zero_dates=keep``: zero dates travel as their text (the target decides) instead of as NULL."""
    connect_args(url)
    return dict(parse_qsl(urlsplit(url).query)).get("zero_dates", "null") == "keep"


def as_utc(moment):
    """A naive datetime read in the UTC session, made aware (None stays None)."""
    return None if moment is None else moment.replace(tzinfo=timezone.utc)


def database_of(url: str) -> str | None:
    return connect_args(url)["database"]


def connect(url: str, *, autocommit: bool = False, **overrides) -> pymysql.connections.Connection:
    """A connection in utf8mb4 with the session time zone pinned to UTC."""
    args = connect_args(url) | {"autocommit": autocommit, "init_command": "SET time_zone = '+00:00'"} | overrides
    try:
        return pymysql.connect(**args)
    except pymysql.Error as exc:
        raise translate(exc, f"cannot connect to {redact_url(url)}") from None
