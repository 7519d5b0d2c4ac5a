"""Small helpers shared by the tests: node files, running the CLI, reading tables."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import yaml
from click.testing import CliRunner

from engine.config import load_config
from engine.node import run_node
from ops.cli import main

ROOT = Path(__file__).resolve().parents[1]


def write_node(path: Path, databases: dict[str, str], pipelines: list[dict], node_id: str = "county-110101") -> Path:
    doc = {
        "node": {"id": node_id, "tier": "county", "region": "110101"},
        "databases": {name: {"url": url} for name, url in databases.items()},
        "pipelines": pipelines,
    }
    path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def cli(*args: str, expect: int | None = 0):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    if expect is not None:
        assert result.exit_code == expect, result.output
    return result


def run_once(config_path: Path, pipeline: str | None = None) -> None:
    config = load_config(config_path)
    names = [pipeline] if pipeline else [p.name for p in config.pipelines]
    failures = run_node(config, names, once=True, stop=threading.Event())
    assert not failures, failures


def spawn_engine(config_path: Path, *extra: str, log: Path | None = None) -> subprocess.Popen:
    """The engine as users run it: a separate process."""
    out = open(log, "ab") if log else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "ops", "--log-level", "WARNING", "run", "--config", str(config_path),
                             *extra], cwd=ROOT, stdout=out, stderr=out)


def pg_rows(url: str, sql: str, params=None) -> list[tuple]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def pg_exec(url: str, *statements: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def as_json(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)
