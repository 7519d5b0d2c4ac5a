"""The ``tiersync`` command line. Every stage can be run on its own from here."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from dataclasses import asdict

import click

from engine.config import Config
from engine.errors import ConfigError, TiersyncError, TransientError
from ops.cliutil import config_option, fail, guard, load_node, pipeline_option


@click.group()
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.version_option(package_name="tiersync")
def main(log_level: str) -> None:
    """tiersync: change-data-capture replication across county, city, province and national nodes."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


@main.command()
@config_option
@click.option("--offline", is_flag=True, help="check the file only, without connecting to the databases")
def check(config_path: str, offline: bool) -> None:
    """Validate the configuration, and with the databases reachable, every table, column and key it names."""
    from engine.plan import build_plan

    config = load_node(config_path)
    if offline:
        click.echo(f"{config_path}: valid ({len(config.pipelines)} pipeline(s))")
        return
    problems: list[str] = []
    for pipeline in config.pipelines:
        try:
            build_plan(config, pipeline).close()
        except ConfigError as exc:
            problems += exc.problems
        except TiersyncError as exc:
            problems.append(str(exc))
    if problems:
        click.secho(f"{len(problems)} problem(s):", fg="red", err=True)
        for problem in problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(2)
    click.echo(f"{config_path}: valid; {len(config.pipelines)} pipeline(s) match their databases")


# ------------------------------------------------------------------ triggers

@main.group()
def triggers() -> None:
    """Install, review, inspect and remove trigger capture on a pipeline's source database."""


def _capture(config: Config, pipeline_name: str, need_tables: bool = True):
    from engine.plan import source_tables
    from engine.registry import connector_for

    pipeline = config.pipeline(pipeline_name)
    db = config.databases[pipeline.source.database]
    source = connector_for(db.url, db.state_schema)
    source.check()
    tables = []
    if need_tables:
        problems: list[str] = []
        tables = source_tables(config, pipeline, source, problems)
        if problems:
            raise ConfigError(problems)
    return source, pipeline, tables


@triggers.command("sql")
@config_option
@pipeline_option
@click.option("--uninstall", is_flag=True, help="show the statements uninstall would run instead")
def triggers_sql(config_path: str, pipeline_name: str, uninstall: bool) -> None:
    """Print every statement install (or uninstall) would run; change nothing."""
    config = load_node(config_path)

    def show():
        source, pipeline, tables = _capture(config, pipeline_name, need_tables=not uninstall)
        capture = source.trigger_capture(config.node.id, pipeline.name)
        if uninstall:
            statements = capture.uninstall_statements([source.qualify(t) for t in pipeline.source.tables])
        else:
            statements = capture.install_statements(tables)
        click.echo(f"-- tiersync {'uninstall' if uninstall else 'install'} for pipeline {pipeline.name} "
                   f"on database {pipeline.source.database}; nothing has been run")
        for statement in statements:
            click.echo(statement.rstrip() + ";\n")
    guard(show)


@triggers.command("install")
@config_option
@pipeline_option
def triggers_install(config_path: str, pipeline_name: str) -> None:
    """Create the change log and one trigger set per captured table (safe to run again)."""
    config = load_node(config_path)

    def install():
        source, pipeline, tables = _capture(config, pipeline_name)
        capture = source.trigger_capture(config.node.id, pipeline.name)
        capture.execute(capture.install_statements(tables))
        for table in tables:
            key = ", ".join(table.key) if table.key else "none (append)"
            click.echo(f"capture installed on {table.info.id} (key: {key})")
    guard(install)


@triggers.command("uninstall")
@config_option
@pipeline_option
@click.option("--force", is_flag=True, help="remove capture even though changes are still pending")
def triggers_uninstall(config_path: str, pipeline_name: str, force: bool) -> None:
    """Remove every object install created for this pipeline's tables, and nothing else."""
    config = load_node(config_path)

    def uninstall():
        source, pipeline, _ = _capture(config, pipeline_name, need_tables=False)
        capture = source.trigger_capture(config.node.id, pipeline.name)
        tables = [source.qualify(t) for t in pipeline.source.tables]
        pending = sum(s.pending for s in capture.status(tables))
        if pending and not force:
            fail(f"{pending} change(s) are still pending for these tables; run the pipeline first, "
                  f"or pass --force to drop them")
        capture.execute(capture.uninstall_statements(tables))
        click.echo(f"capture removed from {', '.join(str(t) for t in tables)}")
    guard(uninstall)


@triggers.command("status")
@config_option
@pipeline_option
def triggers_status(config_path: str, pipeline_name: str) -> None:
    """Per table: capture installed or not, pending changes, age of the oldest pending change."""
    from datetime import datetime, timezone

    config = load_node(config_path)

    def status():
        source, pipeline, _ = _capture(config, pipeline_name, need_tables=False)
        capture = source.trigger_capture(config.node.id)
        rows = capture.status([source.qualify(t) for t in pipeline.source.tables])
        click.echo(f"{'table':40} {'installed':9} {'pending':>9} {'oldest':>12}")
        for row in rows:
            age = "-"
            if row.oldest_pending is not None:
                age = f"{(datetime.now(timezone.utc) - row.oldest_pending).total_seconds():.1f}s"
            click.echo(f"{str(row.table):40} {'yes' if row.installed else 'no':9} {row.pending:>9} {age:>12}")
    guard(status)


# ------------------------------------------------------------------ logical replication slots

@main.group()
def slot() -> None:
    """Review, create, drop and inspect a logical pipeline's publication and replication slot (PostgreSQL)."""


def _slots(config: Config, pipeline_name: str):
    from engine.registry import connector_for

    pipeline = config.pipeline(pipeline_name)
    if pipeline.source.capture != "logical":
        raise ConfigError([f"pipeline {pipeline_name} uses capture: {pipeline.source.capture}, not logical"])
    db = config.databases[pipeline.source.database]
    source = connector_for(db.url, db.state_schema)
    if not hasattr(source, "slots"):
        raise ConfigError([f"database {pipeline.source.database} has no logical replication slots"])
    return source, pipeline, source.slots(pipeline.source, pipeline.name)


@slot.command("sql")
@config_option
@pipeline_option
@click.option("--drop", is_flag=True, help="show what `slot drop` would run instead")
def slot_sql(config_path: str, pipeline_name: str, drop: bool) -> None:
    """Print the statements `slot create` (or `slot drop`) would run; change nothing."""
    config = load_node(config_path)

    def show():
        source, pipeline, admin = _slots(config, pipeline_name)
        tables = [source.qualify(t) for t in pipeline.source.tables]
        for statement in admin.drop_statements() if drop else admin.create_statements(tables):
            click.echo(statement + ";")
    guard(show)


@slot.command("create")
@config_option
@pipeline_option
def slot_create(config_path: str, pipeline_name: str) -> None:
    """Create (or extend) the publication and create the slot; changes after this are captured."""
    config = load_node(config_path)

    def create():
        source, pipeline, admin = _slots(config, pipeline_name)
        admin.execute(admin.create_statements([source.qualify(t) for t in pipeline.source.tables]))
        status = admin.status()
        click.echo(f"slot {admin.slot} ready at {status.confirmed_flush_lsn}; publication {admin.publication}")
    guard(create)


@slot.command("drop")
@config_option
@pipeline_option
def slot_drop(config_path: str, pipeline_name: str) -> None:
    """Drop the slot (so it stops holding WAL) and the publication."""
    config = load_node(config_path)

    def drop():
        _, _, admin = _slots(config, pipeline_name)
        admin.execute(admin.drop_statements())
        click.echo(f"slot {admin.slot} and publication {admin.publication} dropped")
    guard(drop)


@slot.command("status")
@config_option
@pipeline_option
def slot_status(config_path: str, pipeline_name: str) -> None:
    """Whether the slot is active, its confirmed flush LSN and how much WAL it holds."""
    config = load_node(config_path)

    def show():
        _, pipeline, admin = _slots(config, pipeline_name)
        status = admin.status()
        if status is None:
            fail(f"slot {admin.slot} does not exist; create it with `tiersync slot create`")
        retained = (status.retained_wal_bytes or 0)
        click.echo(f"slot {status.name}: {'active' if status.active else 'inactive'}, "
                   f"confirmed flush {status.confirmed_flush_lsn}, restart {status.restart_lsn}, "
                   f"WAL held {retained} bytes ({retained / 1048576:.1f} MB), wal_status {status.wal_status}")
        if retained > pipeline.source.max_retained_wal_mb * 1048576:
            click.secho(f"warning: over max_retained_wal_mb={pipeline.source.max_retained_wal_mb}", fg="yellow")
    guard(show)


# ------------------------------------------------------------------ running

@main.command()
@config_option
@click.option("--pipeline", "pipeline_name", default=None, help="run only this pipeline")
@click.option("--once", is_flag=True, help="drain what is pending, then exit")
def run(config_path: str, pipeline_name: str | None, once: bool) -> None:
    """Run the node's pipelines until SIGTERM/SIGINT (or, with --once, until nothing is pending)."""
    from engine.node import run_node, tune_garbage_collector

    config = load_node(config_path)
    names = [pipeline_name] if pipeline_name else [p.name for p in config.pipelines]
    guard(lambda: [config.pipeline(n) for n in names])
    stop = threading.Event()

    def on_signal(signum, _frame):
        logging.getLogger("tiersync").info("signal %s: finishing the current batch, then stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    tune_garbage_collector()
    failures = run_node(config, names, once=once, stop=stop, network=pipeline_name is None)
    if failures:
        for name, error in failures.items():
            click.secho(f"pipeline {name}: {error}", fg="red", err=True)
        sys.exit(1)


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def status(config_path: str, as_json: bool) -> None:
    """Each pipeline's source position, applied position, pending changes, lag and dead letters; and on a node
    with an exchange, each link's outbox backlog and the inbox's batches received but not yet applied."""
    from engine.node import exchange_status, pipeline_status

    config = load_node(config_path)
    rows = [pipeline_status(config, p.name) for p in config.pipelines]
    exchange = exchange_status(config)
    if as_json:
        doc = {"pipelines": [asdict(r) for r in rows]}
        if exchange is not None:
            doc["exchange"] = asdict(exchange)
        click.echo(json.dumps(doc, indent=2))
    else:
        _print_pipelines(rows)
        if exchange is not None:
            _print_exchange(exchange)
    if any(r.error for r in rows) or (exchange is not None and exchange.error):
        sys.exit(1)


def _print_pipelines(rows) -> None:
    click.echo(f"{'pipeline':24} {'pending':>8} {'lag(s)':>9} {'dead':>5}  {'applied position':28} source")
    for row in rows:
        if row.error:
            click.echo(f"{row.name:24} error: {row.error}")
            continue
        pending = "-" if row.pending is None else row.pending
        click.echo(f"{row.name:24} {pending:>8} {row.lag_seconds:>9.1f} {row.dead_letters:>5}  "
                   f"{row.applied_position:28} {row.source_position}")
        if row.warning:
            click.secho(f"  warning: {row.warning}", fg="yellow")


def _print_exchange(exchange) -> None:
    click.echo()
    if exchange.error:
        click.echo(f"exchange database error: {exchange.error}")
        return
    click.echo(f"{'backlog':8} {'peer':24} {'consumer':16} {'batches':>8} {'changes':>9} {'oldest(s)':>10} "
               f"{'last seq':>9}")
    for row in exchange.backlogs:  # last seq: queued for the link (outbox), applied by the consumer (inbox)
        click.echo(f"{row.side:8} {row.peer:24} {row.consumer or '-':16} {row.batches:>8} {row.changes:>9} "
                   f"{row.age_seconds:>10.1f} {row.last_seq:>9}")
        if row.warning:
            click.secho(f"  warning: {row.side} {row.peer}: {row.warning}", fg="yellow")
    if not any(r.side == "inbox" for r in exchange.backlogs):
        click.echo("inbox    nothing received is waiting to be applied")


# ------------------------------------------------------------------ checkpoints and dead letters

@main.group()
def checkpoint() -> None:
    """Show or set a pipeline's checkpoint in its target."""


def _target(config: Config, pipeline_name: str):
    from engine.registry import connector_for

    pipeline = config.pipeline(pipeline_name)
    db = config.databases[pipeline.target.database]
    return connector_for(db.url, db.state_schema)


@checkpoint.command("show")
@config_option
@pipeline_option
def checkpoint_show(config_path: str, pipeline_name: str) -> None:
    """Print the position the pipeline resumes from."""
    config = load_node(config_path)
    click.echo(guard(lambda: _target(config, pipeline_name).load_checkpoint(pipeline_name)) or "(none)")


@checkpoint.command("set")
@config_option
@pipeline_option
@click.argument("position")
def checkpoint_set(config_path: str, pipeline_name: str, position: str) -> None:
    """Set the position the pipeline resumes from (for repairs; the pipeline must be stopped)."""
    from engine.position import parse_position
    from engine.registry import connector_for

    config = load_node(config_path)
    pipeline = config.pipeline(pipeline_name)
    source_db = config.databases[pipeline.source.database]
    connector_for(source_db.url)  # loads the source's position kinds
    try:
        parse_position(position)
    except ValueError as exc:
        fail(str(exc), 2)
    guard(lambda: _target(config, pipeline_name).store_checkpoint(pipeline_name, position))
    click.echo(f"checkpoint of {pipeline_name} set to {position}")


@main.command("dead-letters")
@config_option
@pipeline_option
@click.option("--limit", default=50, show_default=True)
def dead_letters(config_path: str, pipeline_name: str, limit: int) -> None:
    """List rows the target refused, with the reason."""
    config = load_node(config_path)
    letters = guard(lambda: _target(config, pipeline_name).dead_letters(pipeline_name, limit))
    for letter in letters:
        click.echo(f"#{letter['id']} {letter['created_at']} {letter['source_table']} → {letter['target_table']} "
                   f"op={letter['op']} key={letter['key']}: {letter['error']}")
    if not letters:
        click.echo("no dead letters")


@main.command()
@click.option("--dir", "directory", default=None, help="where to put the demo databases (default: a new temp dir)")
def demo(directory: str | None) -> None:
    """Replicate sample enterprise data from a county SQLite database to a city one, and print the result."""
    from ops.demo import run_demo

    try:
        run_demo(directory)
    except TransientError as exc:
        fail(str(exc))


@main.command()
@config_option
@pipeline_option
@click.option("--table", "tables", multiple=True, help="load only this table (repeatable); default: all")
@click.option("--where", default=None, help="SQL condition on the source table: load only matching rows")
@click.option("--chunk-rows", default=5000, show_default=True, type=click.IntRange(1, 1_000_000))
def snapshot(config_path: str, pipeline_name: str, tables: tuple[str, ...], where: str | None,
             chunk_rows: int) -> None:
    """Copy current rows into the target (initial load or re-load), then the stream carries on from there.

    Chunked by key; a crashed load resumes from its last chunk; rows the source no longer has are
    removed from the target (mirror mode, whole tables).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from engine.plan import build_plan
    from engine.snapshot import Snapshot

    config = load_node(config_path)
    plan = guard(lambda: build_plan(config, config.pipeline(pipeline_name)))
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]:>9} rows/s"), TimeRemainingColumn())
    with Progress(*columns, disable=not sys.stderr.isatty()) as bar:
        tasks: dict = {}
        started: dict = {}

        def on_progress(table, rows, total):
            import time

            if table not in tasks:
                tasks[table] = bar.add_task(str(table), total=max(total, rows), rate="-")
                started[table] = (time.monotonic(), rows)
            t0, rows0 = started[table]
            rate = (rows - rows0) / max(time.monotonic() - t0, 1e-6)
            bar.update(tasks[table], completed=rows, total=max(total, rows), rate=f"{rate:,.0f}")

        loads = guard(lambda: Snapshot(plan, list(tables) or None, where, chunk_rows, on_progress).run())
    plan.close()
    for load in loads:
        extra = f", {load.extras_deleted} extra target rows removed" if load.extras_deleted else ""
        dead = f", {load.dead_letters} dead letters" if load.dead_letters else ""
        click.echo(f"{load.table}: {load.rows} rows loaded{extra}{dead}")


# command groups that live in their own modules
from ops.binlog_cli import binlog  # noqa: E402
from ops.bundle_cli import bundle  # noqa: E402
from ops.compact_cli import compact  # noqa: E402
from ops.exchange_cli import inbox, outbox, trace  # noqa: E402
from ops.exchange_demo import demo_network  # noqa: E402
from ops.reconcile_cli import reconcile  # noqa: E402
from ops.reload_cli import reload  # noqa: E402
from ops.rules_cli import rules  # noqa: E402

for _command in (binlog, bundle, reconcile, compact, rules, trace, inbox, outbox, demo_network, reload):
    main.add_command(_command)
