"""``tiersync compact``: shrink a source's change log for links that are behind (offline, slow consumers)."""

from __future__ import annotations

import click

from ops.cliutil import config_option, guard, load_node


@click.command()
@config_option
@click.option("--pipeline", "pipeline_name", default=None, help="only this pipeline's source (default: all)")
@click.option("--older-than", type=click.FloatRange(0), default=0.0, show_default=True,
              help="merge only changes older than this many seconds (keep recent history change by change)")
def compact(config_path: str, pipeline_name: str | None, older_than: float) -> None:
    """Net-change compaction of the trigger change log: purge what every consumer applied, and turn each key's
    pending changes into its net change, so a backlog ships as its final state. Safe while pipelines run;
    schedule it (cron, systemd timer) for links that are often offline."""
    from engine.plan import source_tables
    from engine.registry import connector_for

    config = load_node(config_path)
    names = [pipeline_name] if pipeline_name else [p.name for p in config.pipelines]

    def run() -> None:
        done: set[tuple] = set()
        for name in names:
            pipeline = config.pipeline(name)
            if pipeline.source.capture != "trigger":
                click.echo(f"{name}: {pipeline.source.capture} capture has no change log to compact")
                continue
            db = config.databases[pipeline.source.database]
            source = connector_for(db.url, db.state_schema)
            source.check()
            problems: list[str] = []
            tables = source_tables(config, pipeline, source, problems)
            key = (db.url, db.state_schema, tuple(sorted(str(t.info.id) for t in tables)))
            if problems or key in done:
                continue
            done.add(key)
            figures = source.trigger_capture(config.node.id).compact(tables, older_than)
            saved = figures.bytes_before - figures.bytes_after
            click.echo(f"{name} ({pipeline.source.database}): change log {figures.rows_before} → {figures.rows_after} "
                       f"rows, {figures.bytes_before / 1048576:.1f} → {figures.bytes_after / 1048576:.1f} MB "
                       f"(saved {saved / 1048576:.1f} MB); purged {figures.purged} applied rows; "
                       f"{figures.keys_compacted} keys compacted, {figures.rows_merged} changes merged away")

    guard(run)
