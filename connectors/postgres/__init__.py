"""PostgreSQL connector (psycopg 3): trigger capture, set-based apply."""

from .connector import PostgresConnector

__all__ = ["PostgresConnector"]
