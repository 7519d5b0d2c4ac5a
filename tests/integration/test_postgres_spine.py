"""PostgreSQL → PostgreSQL through the trigger change log, mapped, exactly once."""

from __future__ import annotations

import pytest

from tests.helpers import cli, pg_exec, pg_rows, run_once, write_node

pytestmark = pytest.mark.postgres

SOURCE_DDL = """
CREATE TABLE public.enterprise (
    id integer PRIMARY KEY,
    name text NOT NULL,
    region_code char(6) NOT NULL,
    reg_capital numeric(14,2),
    internal_note text
)"""
TARGET_DDL = [
    "CREATE SCHEMA exchange",
    """CREATE TABLE exchange.qy_jbxx (
        qyid integer PRIMARY KEY,
        qymc text NOT NULL,
        xzqh char(6) NOT NULL,
        reg_capital numeric(14,2),
        sjly text
    )""",
]


@pytest.fixture
def enterprise_node(tmp_path, pg_databases):
    county, city = pg_databases
    pg_exec(county, SOURCE_DDL)
    pg_exec(city, *TARGET_DDL)
    config = write_node(tmp_path / "node.yaml", {"county_biz": county, "city_biz": city}, [{
        "name": "enterprise-up",
        "source": {"database": "county_biz", "capture": "trigger", "tables": ["public.enterprise"]},
        "target": {"database": "city_biz"},
        "mappings": [{"source": "public.enterprise", "target": "exchange.qy_jbxx",
                      "columns": {"id": "qyid", "name": "qymc", "region_code": "xzqh"},
                      "drop": ["internal_note"], "constants": {"sjly": "county-110101"}}],
    }])
    return config, county, city


def target_rows(city):
    return pg_rows(city, "SELECT qyid, qymc, xzqh, reg_capital, sjly FROM exchange.qy_jbxx ORDER BY qyid")


def test_issue_example_config_is_valid(tmp_path):
    (tmp_path / "node.yaml").write_text("""\
node: {id: county-110101, tier: county, region: "110101"}
databases:
  county_biz: {url: "postgresql://postgres@127.0.0.1:5432/county"}
  city_biz:   {url: "postgresql://postgres@127.0.0.1:5432/city"}
pipelines:
  - name: enterprise-up
    source: {database: county_biz, capture: trigger, tables: [public.enterprise]}
    target: {database: city_biz}
    mappings:
      - source: public.enterprise
        target: exchange.qy_jbxx
        columns: {id: qyid, name: qymc, region_code: xzqh}
""")
    cli("check", "--offline", "--config", str(tmp_path / "node.yaml"))


def test_triggers_sql_changes_nothing(enterprise_node):
    config, county, _ = enterprise_node
    result = cli("triggers", "sql", "--config", str(config), "--pipeline", "enterprise-up")
    assert "CREATE TABLE IF NOT EXISTS \"tiersync\".tiersync_change_log" in result.output
    assert "CREATE OR REPLACE TRIGGER tiersync_capture" in result.output
    assert pg_rows(county, "SELECT to_regclass('tiersync.tiersync_change_log')") == [(None,)]
    assert pg_rows(county, "SELECT count(*) FROM pg_trigger WHERE tgname = 'tiersync_capture'") == [(0,)]


USER_OBJECTS = """
SELECT 'rel ' || c.oid::regclass::text FROM pg_class c
WHERE c.relnamespace::regnamespace::text NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
UNION ALL SELECT 'proc ' || p.oid::regprocedure::text FROM pg_proc p
WHERE p.pronamespace::regnamespace::text NOT IN ('pg_catalog', 'information_schema')
UNION ALL SELECT 'trigger ' || tgname FROM pg_trigger WHERE NOT tgisinternal
UNION ALL SELECT 'schema ' || nspname FROM pg_namespace
ORDER BY 1"""


def test_install_twice_status_and_uninstall_leaves_nothing(enterprise_node):
    config, county, _ = enterprise_node
    args = ("--config", str(config), "--pipeline", "enterprise-up")
    before = pg_rows(county, USER_OBJECTS)
    cli("triggers", "install", *args)
    cli("triggers", "install", *args)
    assert pg_rows(county, "SELECT count(*) FROM pg_trigger WHERE tgname = 'tiersync_capture'") == [(1,)]
    pg_exec(county, "INSERT INTO enterprise VALUES (1, 'a', '110101', 1.50, 'x')",
            "INSERT INTO enterprise VALUES (2, 'b', '110101', 2.50, 'y')")
    status = cli("triggers", "status", *args).output
    line = next(x for x in status.splitlines() if x.startswith("public.enterprise"))
    assert line.split()[1:3] == ["yes", "2"]
    refused = cli("triggers", "uninstall", *args, expect=1)
    assert "pending" in refused.output
    assert "DROP TRIGGER IF EXISTS tiersync_capture" in cli("triggers", "sql", "--uninstall", *args).output
    cli("triggers", "uninstall", *args, "--force")
    assert pg_rows(county, USER_OBJECTS) == before  # every object install made is gone; nothing else was touched
    assert pg_rows(county, "SELECT count(*) FROM enterprise") == [(2,)]


def test_refuses_table_without_key(tmp_path, pg_databases):
    county, city = pg_databases
    pg_exec(county, "CREATE TABLE nokey (a int, b text)")
    pg_exec(city, "CREATE TABLE nokey (a int, b text)")
    config = write_node(tmp_path / "node.yaml", {"s": county, "t": city}, [{
        "name": "p", "source": {"database": "s", "tables": ["nokey"]}, "target": {"database": "t"}}])
    result = cli("triggers", "install", "--config", str(config), "--pipeline", "p", expect=2)
    assert "no primary key" in result.output
    config = write_node(tmp_path / "node2.yaml", {"s": county, "t": city}, [{
        "name": "p", "source": {"database": "s", "tables": ["nokey"]}, "target": {"database": "t", "mode": "append"}}])
    cli("triggers", "install", "--config", str(config), "--pipeline", "p")


def test_mapped_replication_insert_update_delete(enterprise_node):
    config, county, city = enterprise_node
    cli("triggers", "install", "--config", str(config), "--pipeline", "enterprise-up")
    pg_exec(county,
            "INSERT INTO enterprise SELECT g, '企业' || g, '110101', g * 1.25, 'note' FROM generate_series(1, 50) g",
            "UPDATE enterprise SET name = name || '有限公司' WHERE id % 5 = 0",
            "DELETE FROM enterprise WHERE id % 7 = 0",
            "UPDATE enterprise SET id = 1000 WHERE id = 1")  # a key change: old row goes, new row comes
    run_once(config)
    expected = pg_rows(county, "SELECT id, name, region_code, reg_capital, 'county-110101' FROM enterprise ORDER BY id")
    assert target_rows(city) == expected
    assert pg_rows(county, "SELECT count(*) FROM tiersync.tiersync_change_log") == [(0,)]  # purged after apply
    status = cli("status", "--config", str(config), "--json").output
    assert '"pending": 0' in status and '"dead_letters": 0' in status


def test_applying_twice_changes_nothing(enterprise_node):
    """Re-delivering an applied batch (as after a crash before the source was acknowledged) is harmless."""
    from engine.config import load_config
    from engine.pipeline import PipelineRunner

    config, county, city = enterprise_node
    cli("triggers", "install", "--config", str(config), "--pipeline", "enterprise-up")
    pg_exec(county, "INSERT INTO enterprise SELECT g, 'e' || g, '110101', g, NULL FROM generate_series(1, 20) g",
            "UPDATE enterprise SET reg_capital = reg_capital + 1 WHERE id <= 10")
    runner = PipelineRunner(load_config(config), "enterprise-up")
    runner.open()
    read = runner.reader.read(1000)
    from engine.apply import Batch
    changes = [c for e in read.events for c in runner.plan.mappings[e.table].map(e)]
    runner.applier.apply(Batch("enterprise-up", changes, read.position, len(read.events)))
    first = target_rows(city)
    runner.applier.apply(Batch("enterprise-up", changes, read.position, len(read.events)))
    assert target_rows(city) == first
    runner.close()


def test_rejected_row_goes_to_dead_letters_and_rest_applies(enterprise_node):
    config, county, city = enterprise_node
    pg_exec(city, "ALTER TABLE exchange.qy_jbxx ADD CONSTRAINT capital_small CHECK (reg_capital < 1000)")
    cli("triggers", "install", "--config", str(config), "--pipeline", "enterprise-up")
    pg_exec(county, "INSERT INTO enterprise SELECT g, 'e' || g, '110101', g * 10, NULL FROM generate_series(1, 200) g")
    run_once(config)
    assert len(target_rows(city)) == 99  # 10..990 pass, 1000..2000 refused
    letters = pg_rows(city, "SELECT key, error, event->'after'->>'name' FROM tiersync.tiersync_dead_letter ORDER BY id")
    assert len(letters) == 101
    assert "capital_small" in letters[0][1]
    assert letters[0][2].startswith("e")
    status = cli("status", "--config", str(config), "--json").output
    assert '"dead_letters": 101' in status
    assert "capital_small" in cli("dead-letters", "--config", str(config), "--pipeline", "enterprise-up").output


def test_config_problems_reported_together_with_lines(tmp_path, pg_databases):
    county, city = pg_databases
    pg_exec(county, SOURCE_DDL)
    pg_exec(city, *TARGET_DDL)
    config = tmp_path / "node.yaml"
    config.write_text(f"""\
node: {{id: county-110101, tier: county, region: "110101"}}
databases:
  county_biz: {{url: "{county}"}}
  city_biz: {{url: "{city}"}}
pipelines:
  - name: enterprise-up
    source: {{database: county_biz, capture: trigger, tables: [public.enterprise]}}
    target: {{database: city_biz}}
    mappings:
      - source: public.enterprise
        target: exchange.qy_jbxx
        columns: {{id: qyid, name: qymcc, region: xzqh}}
""")
    output = cli("check", "--config", str(config), expect=2).output
    assert "'qymcc' is not in the target table (did you mean 'qymc'?)" in output
    assert "source column 'region' is not in public.enterprise (did you mean 'region_code'?)" in output
    config.write_text(config.read_text().replace(city, city.rsplit("/", 1)[0] + "/no_such_db"))
    output = cli("check", "--config", str(config), expect=2).output
    assert "no_such_db" in output and "does not exist" in output


def test_secrets_from_environment(tmp_path, pg_databases, monkeypatch):
    county, city = pg_databases
    monkeypatch.setenv("CITY_URL", city)
    config = tmp_path / "node.yaml"
    config.write_text(f"""\
node: {{id: n1, tier: city, region: "110100"}}
databases:
  a: {{url: "{county}"}}
  b: {{url: "${{CITY_URL}}"}}
  c: {{url: "postgresql://u:${{MISSING_SECRET}}@h/db"}}
pipelines: []
""")
    output = cli("check", "--offline", "--config", str(config), expect=2).output
    assert "MISSING_SECRET" in output and ":5:" in output


def test_schema_drift_stops_clearly_and_loses_nothing(enterprise_node):
    """A target column that disappears stops the pipeline with a clear error; once fixed, nothing is missing."""
    from engine.config import load_config
    from engine.errors import ConfigError, TerminalError
    from engine.pipeline import PipelineRunner

    config, county, city = enterprise_node
    cli("triggers", "install", "--config", str(config), "--pipeline", "enterprise-up")
    pg_exec(county, "INSERT INTO enterprise VALUES (1, 'a', '110101', 1, NULL)")
    run_once(config)
    running = PipelineRunner(load_config(config), "enterprise-up")
    running.open()
    pg_exec(city, "ALTER TABLE exchange.qy_jbxx DROP COLUMN sjly")  # drift under a running pipeline
    pg_exec(county, "INSERT INTO enterprise VALUES (2, 'b', '110101', 2, NULL)")
    with pytest.raises(TerminalError, match="sjly"):
        running.step()
    running.close()
    with pytest.raises(ConfigError, match="column 'sjly' is not in the target table"):
        PipelineRunner(load_config(config), "enterprise-up").run(once=True)  # caught before anything runs
    pg_exec(city, "ALTER TABLE exchange.qy_jbxx ADD COLUMN sjly text")
    run_once(config)
    assert [r[0] for r in target_rows(city)] == [1, 2]


def test_binlog_capture_on_postgresql_is_refused_clearly(tmp_path, pg_databases):
    county, city = pg_databases
    pg_exec(county, SOURCE_DDL)
    config = write_node(tmp_path / "node.yaml", {"county_biz": county, "city_biz": city}, [{
        "name": "wrong", "source": {"database": "county_biz", "capture": "binlog", "tables": ["public.enterprise"]},
        "target": {"database": "city_biz"}}])
    result = cli("check", "--config", str(config), expect=None)
    assert result.exit_code != 0
    assert "PostgreSQL has no binlog capture" in result.output
