"""``tiersync demo-network``: the four tiers on the embedded default (SQLite), two counties to national and back.

Every node gets a business database and an exchange database (SQLite files) and talks to its neighbours
over exchange-db links. Enterprise records go up and are applied at each tier under that tier's own
names; an enforcement result created at national comes back down only to the county it concerns.
"""

from __future__ import annotations

import sqlite3
import tempfile
import threading
from pathlib import Path

import click
import yaml

from engine.config import load_config
from engine.node import run_node

TIERS = [  # key, node id, tier, region, parent key
    ("dongcheng", "county-110101", "county", "110101", "beijing"),
    ("xicheng", "county-110102", "county", "110102", "beijing"),
    ("beijing", "city-110100", "city", "110100", "province"),
    ("province", "province-110000", "province", "110000", "national"),
    ("national", "national-100000", "national", "100000", None),
]
ROUTES = {"qy_jbxx": {"key": ["qyid"], "up": True}, "zf_jg": {"key": ["id"], "down": True, "down_match": "xzqh"}}
COUNTY_DDL = ["CREATE TABLE enterprise (id INTEGER PRIMARY KEY, name TEXT NOT NULL, region TEXT NOT NULL)",
              "CREATE TABLE enforcement (id INTEGER PRIMARY KEY, region TEXT, result TEXT)"]
UPPER_DDL = ["CREATE TABLE qy_jbxx (qyid INTEGER PRIMARY KEY, qymc TEXT NOT NULL, xzqh TEXT NOT NULL)",
             "CREATE TABLE zf_jg (id INTEGER PRIMARY KEY, xzqh TEXT, jg TEXT)"]


def _node_files(base: Path) -> dict[str, Path]:
    files = {}
    by_key = {t[0]: t for t in TIERS}
    for key, node_id, tier, region, parent in TIERS:
        biz, xdb = base / f"{key}.db", base / f"{key}-exchange.db"
        with sqlite3.connect(biz) as conn:
            for statement in COUNTY_DDL if tier == "county" else UPPER_DDL:
                conn.execute(statement)
        links = {}
        if parent:
            links[by_key[parent][1]] = {"role": "parent", "transport": "exchange-db",
                                        "inbox": f"sqlite:///{base / f'{parent}-exchange.db'}"}
        for child_key, child_id, _, child_region, child_parent in TIERS:
            if child_parent == key:
                links[child_id] = {"role": "child", "region": child_region, "transport": "exchange-db",
                                   "inbox": f"sqlite:///{base / f'{child_key}-exchange.db'}"}
        if tier == "county":
            pipelines = [
                {"name": f"{key}-up", "source": {"database": "biz", "tables": ["enterprise"]},
                 "target": {"database": "x", "outbox": True},
                 "mappings": [{"source": "enterprise", "target": "qy_jbxx",
                               "columns": {"id": "qyid", "name": "qymc", "region": "xzqh"}}]},
                {"name": f"{key}-results", "source": {"database": "x", "capture": "inbox", "tables": ["zf_jg"]},
                 "target": {"database": "biz"},
                 "mappings": [{"source": "zf_jg", "target": "enforcement",
                               "columns": {"xzqh": "region", "jg": "result"}}]}]
        else:
            pipelines = [{"name": f"{key}-in", "source": {"database": "x", "capture": "inbox", "tables": ["qy_jbxx"]},
                          "target": {"database": "biz"}}]
            if tier == "national":
                pipelines.append({"name": "results-down", "source": {"database": "biz", "tables": ["zf_jg"]},
                                  "target": {"database": "x", "outbox": True}})
        node = {"id": node_id, "tier": tier, "region": region}
        if parent:
            node["parent"] = by_key[parent][1]
        doc = {"node": node, "databases": {"biz": {"url": f"sqlite:///{biz}"}, "x": {"url": f"sqlite:///{xdb}"}},
               "exchange": {"database": "x", "links": links, "tables": ROUTES}, "pipelines": pipelines}
        files[key] = base / f"{key}.yaml"
        files[key].write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return files


def _round(files: dict[str, Path]) -> None:
    for key in ("dongcheng", "xicheng", "beijing", "province", "national", "province", "beijing",
                "dongcheng", "xicheng"):
        config = load_config(files[key])
        failures = run_node(config, [p.name for p in config.pipelines], once=True, stop=threading.Event())
        if failures:
            raise click.ClickException(f"{key}: " + "; ".join(failures.values()))


def _show(path: Path, sql: str) -> None:
    with sqlite3.connect(path) as conn:
        for row in conn.execute(sql):
            click.echo("     " + "  ".join(str(v) for v in row))


def run_network_demo(directory: str | None) -> None:
    from engine.network import exchange_store

    base = Path(directory or tempfile.mkdtemp(prefix="tiersync-network-")).resolve()
    base.mkdir(parents=True, exist_ok=True)
    for old in base.glob("*.db*"):
        old.unlink()
    files = _node_files(base)
    for key in ("dongcheng", "xicheng", "national"):
        config = load_config(files[key])
        pipeline = config.pipelines[0] if key != "national" else config.pipeline("results-down")
        from ops.cli import main

        main.main(["triggers", "install", "--config", str(files[key]), "--pipeline", pipeline.name],
                  standalone_mode=False)
    click.secho(f"1. five nodes (two counties, city, province, national) in {base}", bold=True)
    with sqlite3.connect(base / "dongcheng.db") as conn:
        conn.executemany("INSERT INTO enterprise VALUES (?, ?, '110101')",
                         [(1, "北京东城安全化工有限公司"), (2, "东城建筑工程集团")])
    with sqlite3.connect(base / "xicheng.db") as conn:
        conn.execute("INSERT INTO enterprise VALUES (101, '西城冶金机械公司', '110102')")
    with sqlite3.connect(base / "national.db") as conn:
        conn.executemany("INSERT INTO zf_jg VALUES (?, ?, ?)",
                         [(1, "110101", "东城：整改完成"), (2, "110102", "西城：待复查")])
    click.secho("2. counties registered enterprises; national recorded two enforcement results", bold=True)
    _round(files)
    click.secho("3. national's enterprise table (from both counties, through city and province):", bold=True)
    _show(base / "national.db", "SELECT qyid, qymc, xzqh FROM qy_jbxx ORDER BY qyid")
    for key in ("dongcheng", "xicheng"):
        click.secho(f"4. {key}'s enforcement results (only its own region):", bold=True)
        _show(base / f"{key}.db", "SELECT id, region, result FROM enforcement ORDER BY id")
    _round(files)  # the acknowledgements travel back
    store = exchange_store(load_config(files["dongcheng"]))
    try:
        rows = store.trace(["county-110101:city-110100:1"])
    finally:
        store.close()
    click.secho("5. tiersync trace --batch county-110101:city-110100:1 (as Dongcheng sees it):", bold=True)
    for row in rows:
        click.echo(f"     {row.at}  {row.node:<18} {row.status:<10} {row.detail}")
    click.echo(f"\nTry: tiersync trace --config {files['dongcheng']} --table qy_jbxx --key 1")


@click.command("demo-network")
@click.option("--dir", "directory", type=click.Path(file_okay=False), help="where to put the databases")
def demo_network(directory: str | None) -> None:
    """The four tiers on SQLite: two counties → city → province → national, and results back down."""
    run_network_demo(directory)
