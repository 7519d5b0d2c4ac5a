"""SQLite connector (the standard library's sqlite3): trigger capture and apply; no server needed."""

from .connector import SqliteConnector

__all__ = ["SqliteConnector"]
