"""`tiersync rules validate` against live schemas points every problem at its file:line (SQLite databases)."""

from __future__ import annotations

import sqlite3

from tests.helpers import cli, write_node


def _db(path, *statements) -> str:
    with sqlite3.connect(path) as conn:
        for statement in statements:
            conn.execute(statement)
    return f"sqlite:///{path}"


def test_live_schema_problems_point_at_the_line_of_the_rule(tmp_path):
    source = _db(tmp_path / "s.db", "CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT, code TEXT)",
                 "CREATE TABLE extra (id INTEGER PRIMARY KEY)")
    target = _db(tmp_path / "t.db", "CREATE TABLE item (id INTEGER PRIMARY KEY, mc TEXT, code INTEGER)",
                 "CREATE TABLE one (id INTEGER PRIMARY KEY, mc TEXT)")
    config = write_node(tmp_path / "node.yaml", {"s": source, "t": target}, [
        {"name": "p", "source": {"database": "s", "tables": ["item", "extra"]}, "target": {"database": "t"},
         "mappings": [
             {"source": "item", "columns": {"name": "mc_wrong"}},              # no such target column
             {"source": "item", "target": "missing_table"},                    # no such target table
             {"source": "item", "target": "one", "include_unlisted": False,
              "columns": {"id": "id", "name": "mc"}, "key": ["mc"]},            # key not unique
         ]},
        {"name": "q", "source": {"database": "s", "tables": ["item", "gone"]}, "target": {"database": "t"},
         "mappings": [{"source": "item", "columns": {"name": "mc"}, "conflict": "newer_wins",
                       "metadata": {"captured_at": "ts_missing"}}]},
        {"name": "r", "source": {"database": "s", "tables": ["item"]}, "target": {"database": "t"},
         "mappings": [{"source": "item", "columns": {"name": "mc"}}]},  # code: TEXT into INTEGER
    ])
    lines = config.read_text(encoding="utf-8").splitlines()
    out = cli("rules", "validate", "--config", str(config), expect=2).output
    problems = [p.strip() for p in out.splitlines() if p.startswith("  ")]

    def line_of(fragment: str) -> str:
        problem = next((p for p in problems if fragment in p), None)
        assert problem is not None, f"{fragment!r} not in:\n{out}"
        file, number = problem.split(":")[:2]
        assert file == str(config) and number.isdigit(), problem
        return lines[int(number) - 1]

    assert "mc_wrong" in line_of("column 'mc_wrong' is not in the target table")
    assert "missing_table" in line_of("target table missing_table does not exist")
    assert "key:" in line_of("target key (mc) is not the primary key")
    assert "source: item" in line_of("type mismatch: source code is TEXT, target code is INTEGER")
    assert "ts_missing" in line_of("column 'ts_missing' is not in the target table")
    assert "tables:" in line_of("source table gone does not exist")
    assert "tables:" in line_of("mapping extra → extra: target table extra does not exist")
    assert all(p.startswith(f"{config}:") for p in problems), out


def test_explain_says_what_the_conflict_policy_does(tmp_path):
    config = write_node(tmp_path / "node.yaml", {"s": "sqlite:///s.db", "t": "sqlite:///t.db"}, [{
        "name": "p", "source": {"database": "s", "tables": ["item", "other"]}, "target": {"database": "t"},
        "mappings": [{"source": "item", "conflict": "higher_tier_wins", "metadata": {"tier": "sjcj"}},
                     {"source": "other", "conflict": "reject"}]}])
    out = cli("rules", "explain", "--config", str(config)).output
    assert "sjcj = the change's origin tier" in out
    assert "kept, and the change sent to dead letters, if its sjcj names a higher tier" in out
    assert "the change goes to dead letters when the row differs from the source's before-image" in out
