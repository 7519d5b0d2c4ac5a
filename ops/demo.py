"""The embedded demo: a county and a city agency on SQLite, enterprise data replicated through a mapping."""

from __future__ import annotations

import sqlite3
import tempfile
import threading
from pathlib import Path

import click

from engine.config import load_config
from engine.node import pipeline_status, run_node
from engine.plan import source_tables
from engine.registry import connector_for

NODE_YAML = """\
# A county node: its business database (enterprise registry) feeds the city's exchange table.
node: {{id: county-110101, tier: county, region: "110101", name: Dongcheng county}}
databases:
  county_biz: {{url: "sqlite:///{county}"}}
  city_biz:   {{url: "sqlite:///{city}"}}
pipelines:
  - name: enterprise-up
    source: {{database: county_biz, capture: trigger, tables: [enterprise]}}
    target: {{database: city_biz, node: city-110100}}
    mappings:
      - source: enterprise
        target: qy_jbxx
        columns: {{id: qyid, name: qymc, region_code: xzqh, reg_capital: {{to: zczb, cast: decimal}}}}
        drop: [internal_note]
        constants: {{sjly: county-110101}}
        metadata: {{captured_at: tbsj}}
"""

COUNTY_SCHEMA = """
CREATE TABLE enterprise (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    region_code TEXT NOT NULL,
    industry TEXT,
    reg_capital NUMERIC(14,2),
    founded DATE,
    internal_note TEXT
);
"""

CITY_SCHEMA = """
CREATE TABLE qy_jbxx (
    qyid INTEGER PRIMARY KEY,
    qymc TEXT NOT NULL,
    xzqh TEXT NOT NULL,
    industry TEXT,
    zczb NUMERIC(14,2),
    founded DATE,
    sjly TEXT,
    tbsj TEXT
);
"""

ENTERPRISES = [
    (1, "北京东城安全化工有限公司", "110101", "化工", 5000000.00, "2003-05-12", "重点监管"),
    (2, "东城建筑工程集团", "110101", "建筑", 12000000.00, "1998-11-02", None),
    (3, "京东方矿业设备厂", "110101", "矿山", 800000.50, "2010-03-30", "复查"),
    (4, "东直门烟花爆竹仓储", "110101", "烟花爆竹", 300000.00, "2015-07-01", None),
    (5, "金宝街冶金机械公司", "110101", "冶金", 6500000.00, "2008-01-15", None),
]


def run_demo(directory: str | None) -> None:
    base = Path(directory or tempfile.mkdtemp(prefix="tiersync-demo-")).resolve()
    base.mkdir(parents=True, exist_ok=True)
    county, city = base / "county.db", base / "city.db"
    for path, schema in ((county, COUNTY_SCHEMA), (city, CITY_SCHEMA)):
        path.unlink(missing_ok=True)
        with sqlite3.connect(path) as conn:
            conn.executescript(schema)
    config_path = base / "node.yaml"
    config_path.write_text(NODE_YAML.format(county=f"/{county}", city=f"/{city}"), encoding="utf-8")
    config = load_config(config_path)
    pipeline = config.pipeline("enterprise-up")
    click.secho(f"1. county and city databases created in {base}", bold=True)

    source = connector_for(config.databases["county_biz"].url)
    problems: list[str] = []
    capture = source.trigger_capture(config.node.id, pipeline.name)
    capture.execute(capture.install_statements(source_tables(config, pipeline, source, problems)))
    click.secho("2. capture triggers installed on county.enterprise "
                f"(review them with: tiersync triggers sql --config {config_path} --pipeline enterprise-up)",
                bold=True)

    with sqlite3.connect(county) as conn:
        conn.executemany("INSERT INTO enterprise VALUES (?, ?, ?, ?, ?, ?, ?)", ENTERPRISES)
        conn.execute("UPDATE enterprise SET reg_capital = 5500000.00 WHERE id = 1")
        conn.execute("UPDATE enterprise SET name = '东城建筑工程集团有限公司' WHERE id = 2")
        conn.execute("DELETE FROM enterprise WHERE id = 4")
    click.secho("3. county business changes: 5 inserts, 2 updates, 1 delete", bold=True)

    failures = run_node(config, [pipeline.name], once=True, stop=threading.Event())
    if failures:
        raise click.ClickException("; ".join(failures.values()))
    click.secho("4. replicated to the city through the mapping "
                "(id→qyid, name→qymc, region_code→xzqh, reg_capital→zczb, internal_note dropped):", bold=True)
    with sqlite3.connect(city) as conn:
        rows = conn.execute("SELECT qyid, qymc, xzqh, industry, zczb, founded, sjly FROM qy_jbxx ORDER BY qyid")
        click.echo(f"   {'qyid':>4}  {'qymc':24} {'xzqh':6} {'industry':8} {'zczb':>12} {'founded':10} sjly")
        for qyid, qymc, xzqh, industry, zczb, founded, sjly in rows:
            click.echo(f"   {qyid:>4}  {qymc:24} {xzqh:6} {industry:8} {zczb:>12} {founded:10} {sjly}")
    status = pipeline_status(config, pipeline.name)
    click.secho(f"5. status: pending={status.pending} lag={status.lag_seconds:.1f}s "
                f"dead letters={status.dead_letters} checkpoint={status.applied_position}", bold=True)
    click.echo(f"\nTry: tiersync status --config {config_path}")
