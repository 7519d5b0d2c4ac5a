"""``tiersync binlog …``: the DBA's and operator's view of a binlog pipeline (MySQL/MariaDB ``capture: binlog``)."""

from __future__ import annotations

import json
import sys

import click

from engine.config import Config
from engine.errors import ConfigError
from ops.cliutil import config_option, fail, guard, load_node, pipeline_option


@click.group()
def binlog() -> None:
    """Binlog capture from MySQL/MariaDB: the server's settings, positions and lag."""


def _pipeline(config: Config, pipeline_name: str):
    """The pipeline, its source URL and its target connector (for the checkpoint)."""
    from engine.registry import connector_for

    pipeline = config.pipeline(pipeline_name)
    if pipeline.source.capture != "binlog":
        raise ConfigError([f"pipeline {pipeline_name} uses capture: {pipeline.source.capture}, not binlog"])
    source_url = config.databases[pipeline.source.database].url
    if not source_url.lower().startswith(("mysql://", "mariadb://")):
        raise ConfigError([f"pipeline {pipeline_name}: binlog capture needs a mysql:// or mariadb:// source"])
    target_db = config.databases[pipeline.target.database]
    return pipeline, source_url, connector_for(target_db.url, target_db.state_schema)


def _status(config: Config, pipeline_name: str) -> dict:
    from connectors.mysql.binlog_admin import capture_problems, lag, purged_problem, read_server, server_id_for
    from connectors.mysql.binlog_position import BinlogPosition
    from connectors.mysql.binlog_reader import first_pending_time
    from connectors.mysql.connection import connect

    pipeline, url, target = _pipeline(config, pipeline_name)
    conn = connect(url, autocommit=True)
    try:
        server = read_server(conn)
    finally:
        conn.close()
    checkpoint = target.load_checkpoint(pipeline_name)
    applied = BinlogPosition.deserialise(checkpoint) if checkpoint else None
    settings = server.settings
    report = {
        "server": f"{settings.get('version', '?')} (server_id {settings.get('server_id', '?')})",
        "settings": {name: settings.get(name, "(none)") for name in (
            "log_bin", "binlog_format", "binlog_row_image", "binlog_row_metadata", "binlog_checksum",
            "gtid_mode" if not server.mariadb else "gtid_binlog_pos")},
        "retention": (f"{server.retention_seconds / 3600:.1f} h" if server.retention_seconds else "kept until purged"),
        "binlogs": f"{len(server.files)} files, {sum(s for _, s in server.files)} bytes, oldest "
                   f"{server.files[0][0] if server.files else '?'}",
        "current": server.position.serialise() if server.file else "(unknown)",
        "applied": checkpoint or "(nothing applied yet)",
        "replica_server_id": server_id_for(url, pipeline_name),
        "problems": capture_problems(url, checkpoint),
    }
    if applied is not None:
        gone = purged_problem(server, applied)
        oldest = None if gone else first_pending_time(url, applied, pipeline_name)
        behind = lag(server, applied, oldest)
        report["lag"] = {"bytes": behind.bytes_behind, "transactions": behind.transactions_behind,
                         "seconds": behind.seconds_behind}
    return report


@binlog.command("status")
@config_option
@pipeline_option
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def binlog_status(config_path: str, pipeline_name: str, as_json: bool) -> None:
    """The server's binlog settings, its current position, the applied position and how far behind that is."""
    config = load_node(config_path)
    report = guard(lambda: _status(config, pipeline_name))
    if as_json:
        click.echo(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        click.echo(f"server:    {report['server']}")
        for name, value in report["settings"].items():
            click.echo(f"  {name:22} {value}")
        click.echo(f"retention: {report['retention']}; {report['binlogs']}")
        click.echo(f"current:   {report['current']}")
        click.echo(f"applied:   {report['applied']}")
        if "lag" in report:
            lag = report["lag"]
            parts = []
            if lag["bytes"] is not None:
                parts.append(f"{lag['bytes']} bytes of binlog")
            if lag["transactions"] is not None:
                parts.append(f"~{lag['transactions']} transactions")
            if lag["seconds"] is not None:
                parts.append(f"{lag['seconds']:.1f} s")
            click.echo(f"lag:       {', '.join(parts) or 'unknown'}")
        click.echo(f"reads as replica server_id {report['replica_server_id']}")
        for problem in report["problems"]:
            click.secho(f"problem: {problem}", fg="red")
    if report["problems"]:
        sys.exit(1)


@binlog.command("mark")
@config_option
@pipeline_option
@click.option("--force", is_flag=True, help="replace an existing checkpoint (changes before now are skipped)")
def binlog_mark(config_path: str, pipeline_name: str, force: bool) -> None:
    """Start the pipeline at the server's current binlog position (e.g. right before `tiersync snapshot`)."""
    from connectors.mysql.binlog_admin import read_server
    from connectors.mysql.connection import connect

    config = load_node(config_path)

    def mark() -> str:
        _, url, target = _pipeline(config, pipeline_name)
        existing = target.load_checkpoint(pipeline_name)
        if existing and not force:
            fail(f"pipeline {pipeline_name} already has checkpoint {existing}; --force replaces it and skips every "
                 f"change since then")
        conn = connect(url, autocommit=True)
        try:
            server = read_server(conn)
        finally:
            conn.close()
        if not server.file:
            fail("the server reports no binlog position: is log_bin on, and does the user have REPLICATION CLIENT?")
        position = server.position.serialise()
        target.store_checkpoint(pipeline_name, position)
        return position

    position = guard(mark)
    click.echo(f"checkpoint of {pipeline_name} set to {position}")
