import ast
from pathlib import Path

import pytest

from engine.config import load_config
from engine.errors import ConfigError
from engine.position import parse_position

ROOT = Path(__file__).resolve().parents[2]
DRIVERS = {"psycopg", "psycopg2", "pymysql", "pymysqlreplication", "oracledb", "sqlite3", "kafka", "MySQLdb"}


def test_engine_imports_no_driver():
    for path in (ROOT / "engine").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in DRIVERS, f"{path.name} imports {name}"


def write(tmp_path, text):
    path = tmp_path / "node.yaml"
    path.write_text(text)
    return path


GOOD = """\
node: {id: county-110101, tier: county, region: "110101"}
databases:
  a: {url: "sqlite:///a.db"}
  b: {url: "sqlite:///b.db"}
pipelines:
  - name: p
    source: {database: a, tables: [t]}
    target: {database: b}
"""


def test_every_problem_at_once_with_lines(tmp_path):
    path = write(tmp_path, """\
node: {id: county-110101, tier: county, region: "110101"}
databases:
  a: {url: "sqlite:///a.db"}
pipelines:
  - name: p
    source: {database: a, tables: [t], captur: trigger}
    target: {database: bb, mode: mirrror}
    batch_size: 0
""")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = "\n".join(info.value.problems)
    assert f"{path}:6: unknown key 'captur'" in text and "did you mean 'capture'" in text
    assert f"{path}:7:" in text and "mirrror" in text
    assert f"{path}:8:" in text and "batch_size" in text
    assert f"{path}:7: target database 'bb' is not declared" in text


def test_cross_references(tmp_path):
    path = write(tmp_path, GOOD.replace("database: b}", "database: c}") + """\
    mappings:
      - {source: t2, target: x}
""")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = "\n".join(info.value.problems)
    assert "target database 'c' is not declared" in text
    assert "mapping source 't2' is not in the pipeline's source tables" in text


def test_env_references(tmp_path, monkeypatch):
    monkeypatch.setenv("DB_A", "sqlite:///from-env.db")
    config = load_config(write(tmp_path, GOOD.replace('"sqlite:///a.db"', '"${DB_A}"')))
    assert config.databases["a"].url == "sqlite:///from-env.db"


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "node: [unclosed"))
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "nope.yaml")


def test_redaction():
    from engine.config import redact_url
    assert redact_url("postgresql://u:s3cret@h:5432/db") == "postgresql://u:***@h:5432/db"


def test_unknown_connector_suggests():
    from engine.registry import connector_for
    with pytest.raises(ConfigError, match="did you mean postgresql"):
        connector_for("postgresq://h/db")


def test_positions_round_trip_and_refuse_other_kinds():
    from connectors.postgres.position import PostgresLogPosition, PostgresLsnPosition
    from connectors.sqlite.position import SqliteLogPosition

    pos = PostgresLogPosition("740:742:740,741", "741:745:741", 120)
    assert parse_position(pos.serialise()) == pos
    lsn = PostgresLsnPosition(0x16B374D848, 3)
    assert parse_position(lsn.serialise()) == lsn and lsn.to_text() == "16/B374D848:3"
    with pytest.raises(ValueError, match="not a pglog position"):
        PostgresLogPosition.deserialise(SqliteLogPosition(3).serialise())
    for bad in ("9/5/1", "1:2:|3:4:", "1:2:|3:4:|x"):
        with pytest.raises(ValueError):
            PostgresLogPosition.from_text(bad)
