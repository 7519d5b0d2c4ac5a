"""``tiersync reconcile``: compare a pipeline's source tables (through its mapping) with their targets; repair."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone

import click

from engine.errors import ConfigError, TiersyncError
from ops.cliutil import config_option, load_node, operator_name, pipeline_option

EQUAL, DRIFTED, ERROR = 0, 1, 2


def _error(problems: list[str]) -> None:
    click.secho(f"reconcile failed: {len(problems)} problem(s):" if len(problems) > 1 else "reconcile failed:",
                fg="red", err=True)
    for problem in problems:
        click.echo(f"  {problem}", err=True)
    sys.exit(ERROR)


def _guarded(action):
    try:
        return action()
    except ConfigError as exc:
        _error(exc.problems)
    except TiersyncError as exc:
        _error([str(exc)])


@click.group(invoke_without_command=True)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="the node's YAML file")
@click.option("--pipeline", "pipeline_name", help="pipeline name")
@click.option("--table", "tables", multiple=True, help="source table to check (repeatable); default: all")
@click.option("--where", default=None, help="SQL condition: compare only matching rows (applied on both sides)")
@click.option("--target-where", default=None, help="the condition in the target's column names, where they differ")
@click.option("--since-checkpoint", is_flag=True,
              help="check only the keys changed at the source since the last verified position (trigger capture)")
@click.option("--repair", is_flag=True, help="apply the source's rows for what drifted, through the apply path")
@click.option("--dry-run", is_flag=True, help="with --repair: show what would be repaired, change nothing")
@click.option("--max-repair", type=click.IntRange(0), default=None, help="repair at most this many rows per table")
@click.option("--no-delete", is_flag=True, help="with --repair: never delete extra target rows")
@click.option("--reload-threshold", type=click.FloatRange(0, 1), default=None,
              help="with --repair: re-load a table (tiersync snapshot) instead when this fraction of it drifted")
@click.option("--fence-timeout", type=click.FloatRange(0), default=60.0, show_default=True,
              help="seconds to wait for the target to apply what the source had when it was checksummed")
@click.option("--show", "show_keys", type=click.IntRange(0), default=20, show_default=True,
              help="keys printed per kind")
@click.option("--keys-file", type=click.Path(dir_okay=False), default=None,
              help="write every differing key (JSON) to this file")
@click.option("--json", "as_json", is_flag=True, help="print a JSON report")
@click.pass_context
def reconcile(ctx, config_path, pipeline_name, tables, where, target_where, since_checkpoint, repair, dry_run,
              max_repair, no_delete, reload_threshold, fence_timeout, show_keys, keys_file, as_json) -> None:
    """Compare the source tables, seen through the pipeline's mapping, with the target tables.

    Exit code 0: equal; 1: drifted (after --repair: still drifted); 2: error.
    `tiersync reconcile history` lists earlier runs.
    """
    if ctx.invoked_subcommand is not None:
        return
    if not config_path or not pipeline_name:
        _error(["tiersync reconcile needs --config and --pipeline"])
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from engine.plan import build_plan
    from engine.reconcile import Reconciler, changed_keys, run_record, verify_consumer

    config = load_node(config_path)
    plan = _guarded(lambda: build_plan(config, config.pipeline(pipeline_name)))
    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,.0f}/{task.total:,.0f}"),
               TimeElapsedColumn())
    document: dict = {"pipeline": pipeline_name, "tables": []}
    totals = {"missing": 0, "extra": 0, "different": 0, "in_flight": 0}
    all_keys: dict = {"missing": [], "extra": [], "different": [], "in_flight": []}
    started = time.monotonic()
    try:
        with Progress(*columns, console=console, disable=not sys.stderr.isatty() or as_json) as bar:
            tasks: dict = {}

            def on_progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=max(total, 1))
                bar.update(tasks[stage], completed=done, total=max(total, 1))

            reconciler = _guarded(lambda: Reconciler(plan, list(tables) or None, where, target_where, on_progress,
                                                     fence_timeout=fence_timeout))
            changed = _guarded(lambda: changed_keys(reconciler)) if since_checkpoint else None
            clean = True
            try:
                for table in reconciler.tables:
                    table_id = table.info.id
                    run_started = datetime.now(timezone.utc)
                    only = None if changed is None or changed.first_run else sorted(changed.keys[table_id])
                    report = _guarded(lambda t=table_id, k=only: reconciler.compare(t, keys_only=k))
                    entry = report.to_json(None)
                    entry["checked_keys"] = len(only) if only is not None else None
                    repaired = None
                    if repair and report.drifted:
                        repaired = entry["repair"] = _repair(reconciler, plan, report, table_id, dry_run, max_repair,
                                                             no_delete, reload_threshold)
                        if not dry_run:
                            after = _guarded(lambda t=table_id, k=only: reconciler.compare(t, keys_only=k))
                            entry["after_repair"] = after.to_json(None)
                            report = after
                    elif report.differing_fraction > 0.2:
                        entry["recommendation"] = (f"{report.differing_fraction:.0%} of the table differs: re-load "
                                                   f"it with `tiersync snapshot --table {table_id}` or reconcile "
                                                   f"--repair --reload-threshold")
                    result = "drifted" if report.drifted else ("repaired" if repaired else "equal")
                    clean = clean and not report.drifted
                    mode = "since-checkpoint" if only is not None else ("where" if where else "full")
                    record = run_record(pipeline_name, report, run_started, operator_name(), mode, result, repaired)
                    _guarded(lambda r=record: plan.target.save_reconcile_run(r))
                    document["tables"].append(entry)
                    source_entry = entry.get("after_repair", entry)
                    for kind in totals:
                        totals[kind] += source_entry[kind]
                        all_keys[kind] += [[str(table_id), k] for k in source_entry["keys"][kind]]
                if changed is not None and clean and not dry_run and changed.position is not None:
                    # everything changed up to here is verified: remember it, and let the change log drop it
                    plan.target.store_checkpoint(verify_consumer(pipeline_name), changed.position)
                    changed.reader.acknowledge(changed.position)
                    document["verified_position"] = changed.position
            finally:
                if changed is not None:
                    changed.close()
    finally:
        plan.close()
    document.update(totals)
    document["keys"] = all_keys
    document["seconds"] = round(time.monotonic() - started, 3)
    if keys_file:
        with open(keys_file, "w", encoding="utf-8") as out:
            json.dump(all_keys, out, default=str, ensure_ascii=False, indent=1)
    if as_json:
        click.echo(json.dumps(document, default=str, ensure_ascii=False, indent=2))
    else:
        _print(document, show_keys, keys_file)
    drifted = totals["missing"] + totals["extra"] + totals["different"]
    sys.exit(DRIFTED if drifted else EQUAL)


@reconcile.command("history")
@config_option
@pipeline_option
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def history(config_path: str, pipeline_name: str, limit: int, as_json: bool) -> None:
    """Earlier reconcile runs of a pipeline: when, who, result, repairs (newest first)."""
    from engine.registry import connector_for

    config = load_node(config_path)

    def runs():
        pipeline = config.pipeline(pipeline_name)
        db = config.databases[pipeline.target.database]
        return connector_for(db.url, db.state_schema).reconcile_runs(pipeline_name, limit)

    rows = _guarded(runs)
    if as_json:
        click.echo(json.dumps(rows, default=str, indent=2))
        return
    if not rows:
        click.echo(f"no reconcile runs of {pipeline_name} yet")
        return
    click.echo(f"{'finished':26} {'table':24} {'mode':17} {'result':9} {'miss':>6} {'extra':>6} {'diff':>6} "
               f"{'flight':>6}  by / repairs")
    for run in rows:
        finished = run["finished_at"]
        if isinstance(finished, datetime):
            finished = finished.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        repaired = run["repaired"]
        if repaired and not isinstance(repaired, str):
            repaired = json.dumps(repaired)
        click.echo(f"{str(finished)[:26]:26} {run['source_table']:24} {run['mode']:17} {run['result']:9} "
                   f"{run['missing']:>6} {run['extra']:>6} {run['different']:>6} {run['in_flight']:>6}  "
                   f"{run['run_by']} {repaired or ''}")


def _repair(reconciler, plan, report, table_id, dry_run, max_repair, no_delete, reload_threshold) -> dict:
    fraction = report.differing_fraction
    if reload_threshold is not None and fraction > reload_threshold:
        if dry_run:
            return {"reload": True, "dry_run": True, "fraction": fraction}
        from engine.snapshot import Snapshot

        loads = _guarded(lambda: Snapshot(plan, [str(table_id)]).run())
        return {"reload": True, "fraction": fraction, "rows": loads[0].rows, "extras_deleted": loads[0].extras_deleted,
                "dead_letters": loads[0].dead_letters}
    if dry_run:
        would = len(report.missing) + len(report.different) + (0 if no_delete else len(report.extra))
        return {"dry_run": True, "would_repair": would if max_repair is None else min(would, max_repair)}
    return _guarded(lambda: reconciler.repair(table_id, report, max_repair, delete=not no_delete))


def _print(document: dict, show: int, keys_file: str | None) -> None:
    for entry in document["tables"]:
        click.echo(f"{entry['source_table']} → {entry['target_table']}: {entry['source_rows']} source rows, "
                   f"{entry['target_rows']} target rows ({entry['seconds']}s, {entry['differing_buckets']} of "
                   f"{entry['buckets']} buckets differ, {entry['rows_fetched']} rows fetched)")
        _print_counts(entry, show)
        if entry.get("fence_note"):
            click.secho(f"  note: {entry['fence_note']}", fg="yellow")
        if "recommendation" in entry:
            click.secho(f"  recommendation: {entry['recommendation']}", fg="yellow")
        if "repair" in entry:
            click.echo(f"  repair: {json.dumps(entry['repair'], default=str)}")
        if "after_repair" in entry:
            click.echo("  after repair:")
            _print_counts(entry["after_repair"], show)
    verdict = ("equal" if not (document["missing"] or document["extra"] or document["different"]) else "DRIFTED")
    click.echo(f"{verdict}: missing {document['missing']}, extra {document['extra']}, different "
               f"{document['different']}, in flight {document['in_flight']}")
    if keys_file:
        click.echo(f"all keys: {keys_file}")


def _print_counts(entry: dict, show: int) -> None:
    click.echo(f"  missing {entry['missing']}, extra {entry['extra']}, different {entry['different']}, "
               f"in flight {entry['in_flight']}")
    for kind in ("missing", "extra", "different", "in_flight"):
        keys = entry["keys"][kind]
        if not keys or not show:
            continue
        shown = ", ".join(json.dumps(k, default=str, ensure_ascii=False) for k in keys[:show])
        more = f" … and {len(keys) - show} more" if len(keys) > show else ""
        click.echo(f"  {kind}: {shown}{more}")
    if entry.get("columns_differing"):
        click.echo("  columns that differ: " + ", ".join(f"{c} ({n})" for c, n in entry["columns_differing"].items()))
