"""Building exchange networks for tests: node files with links and routes, and SQLite/PostgreSQL helpers."""

from __future__ import annotations

from pathlib import Path

import yaml


def node_file(path: Path, node: dict, databases: dict[str, str], exchange: dict, pipelines: list[dict]) -> Path:
    doc = {"node": node, "databases": {n: {"url": u} for n, u in databases.items()}, "exchange": exchange,
           "pipelines": pipelines}
    path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def capture_out(database: str, exchange_db: str, table: str, to: str, columns: dict, **extra) -> dict:
    """A pipeline that captures ``table`` and queues its changes, mapped to exchange table ``to``."""
    return {"name": f"{table}-out", "source": {"database": database, "tables": [table]},
            "target": {"database": exchange_db, "outbox": True}, "poll_interval": 0.1,
            "mappings": [{"source": table, "target": to, "columns": columns}], **extra}


def inbox_in(exchange_db: str, database: str, table: str, to: str, columns: dict | None = None, name: str = "",
             drop: list | None = None, **extra) -> dict:
    """A pipeline that applies received changes of exchange table ``table`` into ``to``."""
    mapping = {"source": table, "target": to}
    if columns:
        mapping["columns"] = columns
    if drop:
        mapping["drop"] = drop
    return {"name": name or f"{table}-in", "source": {"database": exchange_db, "capture": "inbox", "tables": [table]},
            "target": {"database": database}, "poll_interval": 0.1, "mappings": [mapping], **extra}
