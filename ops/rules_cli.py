"""`tiersync rules …`: validate, test and explain mapping rules without touching a target."""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

import click

from engine.apply import Batch, BatchApplier
from engine.config import Config, MappingConfig, PipelineConfig
from engine.errors import ConfigError, TiersyncError, TransientError
from engine.event import ChangeEvent, Op
from engine.jsontext import dumps_exact
from engine.ruleconfig import ColumnRule
from engine.seams import CapturedTable, TargetSession
from ops.cliutil import config_option, fail, guard, load_node


@click.group()
def rules() -> None:
    """Check, try out and explain mapping rules (changes nothing)."""


# ------------------------------------------------------------------ validate

_FAMILIES = (("bool", ("bool",)), ("number", ("int", "numeric", "decimal", "real", "double", "float", "serial")),
             ("time", ("date", "time")), ("json", ("json",)), ("bytes", ("bytea", "blob")),
             ("text", ("char", "text", "clob", "string")))


def _family(type_name: str) -> str | None:
    low = type_name.lower()
    for family, words in _FAMILIES:
        if any(w in low for w in words):
            return family
    return None


def type_problems(plan) -> list[str]:
    """Plain renames whose source and target types clearly differ (text into a number, date or bool)."""
    problems = []
    for mapping in plan.mappings.values():
        for part in getattr(mapping, "parts", [mapping]):
            target = plan.target_tables.get(part.target)
            if target is None:
                continue
            for plan_ in part.plans.values():
                if plan_ is None or plan_.convert is not None:
                    continue
                source_column, target_column = part.source.column(plan_.source), target.column(plan_.target)
                if source_column is None or target_column is None:
                    continue
                have, want = _family(source_column.type), _family(target_column.type)
                if have == "text" and want in ("number", "time", "bool") or \
                        have in ("number", "time") and want in ("bool", "json") or \
                        have == "time" and want == "number":
                    problems.append(f"pipeline {plan.config.name}, mapping {part.source.id} → {part.target}: "
                                    f"type mismatch: source {plan_.source} is {source_column.type}, target "
                                    f"{plan_.target} is {target_column.type}; add a cast (with format or units)")
    return problems


_MAPPING_PROBLEM = re.compile(r"^pipeline (?P<pipeline>[^,:]+), mapping (?P<source>\S+) → (?P<target>\S+): "
                              r"(?P<what>.*)$", re.S)
_PIPELINE_PROBLEM = re.compile(r"^pipeline (?P<pipeline>[^,:]+): (?P<what>.*)$", re.S)


def _mapping_index(pipeline: PipelineConfig, source: str, target: str) -> int | None:
    """The mapping of ``pipeline`` from ``source`` to ``target`` (either may be schema-qualified or not)."""
    short = target.rpartition(".")[2]
    candidates = [j for j, m in enumerate(pipeline.mappings)
                  if m.source.rpartition(".")[2] == source.rpartition(".")[2]]
    return next((j for j in candidates if (pipeline.mappings[j].target or pipeline.mappings[j].source)
                 .rpartition(".")[2] == short), candidates[0] if candidates else None)


def _producer(mapping: MappingConfig, column: str) -> tuple:
    """Where in a mapping a target column comes from (a column rule, computed, constant or metadata)."""
    for source, rule in mapping.columns.items():
        if column == (rule.to if isinstance(rule, ColumnRule) else rule) or \
                (isinstance(rule, ColumnRule) and rule.to is None and source == column):
            return ("columns", source)
    for section in ("computed", "constants"):
        if column in getattr(mapping, section):
            return (section, column)
    for name, value in mapping.metadata.model_dump().items():
        if value == column:
            return ("metadata", name)
    return ()


def _mapping_rule_path(mapping: MappingConfig, what: str) -> tuple:
    """The part of one mapping a live-schema problem is about (empty: the mapping as a whole)."""
    if rule := re.match(r"(filter|computed\.[^:]+|columns\.[^:]+): ", what):
        return tuple(rule[1].split(".", 1))
    if named := re.match(r"source column '([^']+)'", what):
        return ("columns", named[1]) if named[1] in mapping.columns else ("drop",)
    if named := re.match(r"column '([^']+)' is (?:not in the target table|generated)", what):
        return _producer(mapping, named[1])
    if named := re.match(r"type mismatch: source (\S+) is", what):
        return ("columns", named[1]) if named[1] in mapping.columns else ()
    for start, part, present in (("conflict: ", "conflict", True), ("no target key", "key", bool(mapping.key)),
                                 ("target key", "key", bool(mapping.key)),
                                 ("target table", "target", bool(mapping.target))):
        if what.startswith(start):
            return (part,) if present else ()
    return ()


def _pipeline_rule_path(pipeline: PipelineConfig, what: str) -> tuple:
    """The part of a pipeline a live-schema problem is about."""
    if what.startswith(("source database", "target database")):
        return (what.split(" ", 1)[0], "database")
    if named := re.match(r"key column '[^']+' is not in (\S+)", what):
        j = _mapping_index(pipeline, named[1], named[1])
        if j is not None and pipeline.mappings[j].source_key:
            return ("mappings", j, "source_key")
    if named := re.match(r"mappings into (\S+) disagree", what):
        short = named[1].rpartition(".")[2]
        into = [j for j, m in enumerate(pipeline.mappings) if (m.target or m.source).rpartition(".")[2] == short]
        if into:
            return ("mappings", into[-1], "conflict")
    if (named := re.search(r"value map (\w+)", what)) and named[1] in pipeline.value_maps:
        return ("value_maps", named[1])
    if "source table" in what or "primary key" in what or "key column" in what:
        return ("source", "tables")
    return ()


def _value_at(data, path: tuple):
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def locate(config: Config, problem: str) -> str:
    """Prefix a live-schema problem with the file:line(:column) of the rule or setting it is about."""
    from engine.yamlsource import load_yaml

    match = _MAPPING_PROBLEM.match(problem) or _PIPELINE_PROBLEM.match(problem)
    if not match or not config.source_file:
        return problem
    names = [p.name for p in config.pipelines]
    if match["pipeline"] not in names:
        return problem
    i = names.index(match["pipeline"])
    pipeline = config.pipelines[i]
    path: tuple = ("pipelines", i)
    j = _mapping_index(pipeline, match["source"], match["target"]) if "source" in match.groupdict() else None
    if j is not None:
        path += ("mappings", j) + _mapping_rule_path(pipeline.mappings[j], match["what"])
    elif "source" in match.groupdict():  # a table without a mapping of its own: where the pipeline lists it
        path += ("source", "tables")
    else:
        path += _pipeline_rule_path(pipeline, match["what"])
    source = load_yaml(config.source_file)
    line, column = source.line_of(path), source.column_of(path)
    name = re.search(r"no column '([^']+)'|unknown name '([^']+)'|unknown function (\w+)\(", problem)
    text = _value_at(source.data, path)
    in_expression = path[-1] == "filter" or path[-2:-1] == ("computed",)
    if column and name and isinstance(text, str) and in_expression:
        found = text.find(next(g for g in name.groups() if g))
        raw = Path(config.source_file).read_text(encoding="utf-8").splitlines()[line - 1]
        quoted = raw[column - 1:column] in ("'", '"')
        column += max(found, 0) + (1 if quoted else 0)
    where = f"{config.source_file}:{line}" + (f":{column}" if column else "")
    return f"{where}: {problem}"


@rules.command("validate")
@config_option
@click.option("--offline", is_flag=True, help="check the file only, without the live schemas")
def validate(config_path: str, offline: bool) -> None:
    """Every rule problem at once (file:line:column, with suggestions), against the live schemas when reachable."""
    from engine.plan import build_plan

    config = load_node(config_path)  # shape, names, expressions, value maps: exits 2 listing every problem
    problems: list[str] = []
    unreachable: list[str] = []
    if not offline:
        for pipeline in config.pipelines:
            try:
                plan = build_plan(config, pipeline)
            except TransientError as exc:
                unreachable.append(str(exc))
                continue
            except ConfigError as exc:
                problems += [locate(config, p) for p in exc.problems]
                continue
            except TiersyncError as exc:
                problems.append(locate(config, str(exc)))
                continue
            problems += [locate(config, p) for p in type_problems(plan)]
            plan.close()
    for note in unreachable:
        click.secho(f"not checked against live schemas: {note}", fg="yellow", err=True)
    if problems:
        click.secho(f"{len(problems)} problem(s):", fg="red", err=True)
        for problem in problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(2)
    live = "offline" if offline else ("partly offline" if unreachable else "against the live schemas")
    count = sum(len(p.mappings) for p in config.pipelines)
    click.echo(f"{config_path}: {count} mapping(s) valid ({live})")


# ------------------------------------------------------------------ finding a mapping

def find_mappings(config: Config, name: str, pipeline_name: str | None) -> tuple[PipelineConfig, str]:
    """The pipeline and source table of mapping ``name`` (a source or target table name)."""
    candidates = []
    for pipeline in config.pipelines:
        if pipeline_name and pipeline.name != pipeline_name:
            continue
        for mapping in pipeline.mappings:
            if name in (mapping.source, mapping.target, mapping.source.rpartition(".")[2],
                        (mapping.target or "").rpartition(".")[2]):
                candidates.append((pipeline, mapping.source))
        if name in pipeline.source.tables and not pipeline.mappings_for(name):
            candidates.append((pipeline, name))
    candidates = list(dict.fromkeys((p.name, s) for p, s in candidates))
    if not candidates:
        names = [m.source for p in config.pipelines for m in p.mappings]
        import difflib
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError([f"no mapping of or to {name!r}{hint}; mappings: {', '.join(names) or 'none'}"])
    if len(candidates) > 1:
        raise ConfigError([f"{name!r} names mappings in several pipelines ({', '.join(p for p, _ in candidates)}); "
                           f"add --pipeline"])
    pipeline_name, source = candidates[0]
    return config.pipeline(pipeline_name), source


# ------------------------------------------------------------------ test

class RecordingSession(TargetSession):
    """A target session that only remembers what it was asked to do (for `rules test`)."""

    def __init__(self):
        self.calls: list[tuple] = []

    def begin(self): pass  # noqa: E704
    def commit(self): pass  # noqa: E704
    def rollback(self): pass  # noqa: E704
    def lock_pipeline(self, pipeline): pass  # noqa: E704
    def savepoint(self): pass  # noqa: E704
    def rollback_to_savepoint(self): pass  # noqa: E704
    def release_savepoint(self): pass  # noqa: E704
    def set_origin(self, origin): pass  # noqa: E704
    def save_checkpoint(self, pipeline, position, changes): pass  # noqa: E704
    def save_snapshot_progress(self, pipeline, table, progress): pass  # noqa: E704

    def upsert(self, table, columns, key, rows):
        self.calls.append(("upsert", table.id, list(columns), list(key), len(rows)))

    def current_rows(self, table, key, columns, keys):
        self.calls.append(("current rows", table.id, list(columns), list(key), len(keys)))
        return []  # as if no target row existed: every change is shown as it would apply

    def insert(self, table, columns, rows):
        self.calls.append(("insert", table.id, list(columns), [], len(rows)))

    def delete(self, table, key, keys):
        self.calls.append(("delete", table.id, [], list(key), len(keys)))

    def truncate(self, table):
        self.calls.append(("truncate", table.id, [], [], 0))

    def save_dead_letters(self, letters):
        for letter in letters:
            self.calls.append(("dead letter", letter.target_table, [], [], 1))


def _json(value) -> str:
    return dumps_exact(value) if value is not None else "-"


@rules.command("test")
@config_option
@click.option("--mapping", "mapping_name", required=True, help="source or target table of the mapping")
@click.option("--pipeline", "pipeline_name", default=None, help="the pipeline, where the name is ambiguous")
@click.option("--sample", type=click.IntRange(1, 10000), default=None, help="map this many rows of the source table")
@click.option("--row", "row_json", default=None, help="map this source row (JSON object)")
@click.option("--before", "before_json", default=None, help="with --op u/d: the old row (JSON object)")
@click.option("--op", type=click.Choice(["c", "u", "d", "r"]), default="c", show_default=True)
def test(config_path: str, mapping_name: str, pipeline_name: str | None, sample: int | None, row_json: str | None,
         before_json: str | None, op: str) -> None:
    """Source rows and what the target would receive, side by side, with the SQL that would run; changes nothing."""
    from engine.plan import build_plan

    config = load_node(config_path)
    if (sample is None) == (row_json is None and before_json is None):
        fail("give --sample N or --row '{...}'", 2)

    def run():
        pipeline, source_table = find_mappings(config, mapping_name, pipeline_name)
        try:
            plan = build_plan(config, pipeline)
            target_known = True
        except TransientError as exc:
            click.secho(f"target not reachable ({exc}); showing rows without SQL", fg="yellow", err=True)
            plan = build_plan(config, pipeline, connect_target=False)
            target_known = False
        try:
            table = next(t for t in plan.captured if t.info.id == plan.source.qualify(source_table))
            mapping = plan.mappings[table.info.id]
            events = _events(plan, table, sample, row_json, before_json, op)
            _show(plan, mapping, events, target_known)
        finally:
            plan.close()
    guard(run)


def _events(plan, table: CapturedTable, sample, row_json, before_json, op) -> list[ChangeEvent]:
    now = datetime.now(timezone.utc)
    node = plan.node_id
    if sample:
        scanner = plan.source.table_scanner(table)
        try:
            rows = scanner.chunk(None, sample, None)
        finally:
            scanner.close()
        return [ChangeEvent(Op.READ, table.info.id, tuple(r.get(c) for c in table.key), None, r, i, origin=node,
                            origin_tier=plan.node_tier, captured_at=now, source_node=node) for i, r in enumerate(rows)]
    try:
        after = json.loads(row_json) if row_json else None
        before = json.loads(before_json) if before_json else None
    except json.JSONDecodeError as exc:
        raise ConfigError([f"--row/--before: not JSON: {exc}"]) from None
    if not isinstance(after or before, dict):
        raise ConfigError(["--row must be a JSON object of column values"])
    if op == "d":
        before, after = before or after, None
    unknown = [c for c in (after or before) if table.info.column(c) is None]
    if unknown:
        raise ConfigError([f"--row: no column {', '.join(unknown)} in {table.info.id}; "
                           f"columns: {', '.join(table.info.column_names)}"])
    image = after or before
    return [ChangeEvent(Op(op), table.info.id, tuple(image.get(c) for c in table.key), before, after, 0,
                        origin=node, origin_tier=plan.node_tier, captured_at=now, source_node=node)]


def _show(plan, mapping, events: list[ChangeEvent], target_known: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(100, Console().width))
    grid = Table(title=f"{events[0].table} → " + ", ".join(str(p.target) for p in getattr(mapping, "parts", [mapping])),
                 show_lines=True)
    grid.add_column("op")
    grid.add_column("source row", overflow="fold")
    grid.add_column("target receives", overflow="fold")
    changes, rejected = [], []
    for event in events:
        try:
            produced = mapping.map(event)
        except (ValueError, TypeError, ArithmeticError) as exc:
            rejected.append(event)
            grid.add_row(event.op.value, _json(event.row), f"[red]dead letter: mapping failed: {exc}[/red]")
            continue
        changes += produced
        shown = "\n".join(f"{c.kind} {c.table} key={_json(list(c.key))}" + (f"\n{_json(c.row)}" if c.row else "")
                          for c in produced) or "[yellow]nothing (filtered out, or not sent in this mode)[/yellow]"
        grid.add_row(event.op.value, _json(event.row), shown)
    console.print(grid)
    click.echo(f"{len(events)} source row(s): {len(changes)} target change(s), {len(rejected)} to dead letters")
    if not target_known:
        return
    session = RecordingSession()
    applier = BatchApplier(session, plan.target_tables, plan.conflict_rules(), plan.target_tier)
    applier.apply_open(Batch(plan.config.name, changes, "test", len(events)))
    click.echo("\n-- the statements one batch of these rows would run (in one transaction; nothing was run):")
    for kind, table, columns, key, count in session.calls:
        statements = plan.target.write_statements(kind, table, columns, key) or [f"{kind} {table}"]
        click.echo(f"-- {kind} of {count} row(s) in {table}")
        for statement in statements:
            click.echo(statement + ";")


# ------------------------------------------------------------------ explain

@rules.command("explain")
@config_option
@click.option("--mapping", "mapping_name", default=None, help="one mapping (source or target table); default all")
@click.option("--pipeline", "pipeline_name", default=None)
def explain(config_path: str, mapping_name: str | None, pipeline_name: str | None) -> None:
    """The compiled plan of each mapping, in words (from the file; no database needed)."""
    config = load_node(config_path)

    def run():
        if mapping_name:
            pipeline, source = find_mappings(config, mapping_name, pipeline_name)
            selected = [(pipeline, m) for m in pipeline.mappings_for(source)]
        else:
            selected = [(p, m) for p in config.pipelines if not pipeline_name or p.name == pipeline_name
                        for m in p.mappings]
        for pipeline, mapping in selected:
            click.echo("\n".join(describe(pipeline, mapping)) + "\n")
    guard(run)


def describe(pipeline: PipelineConfig, m: MappingConfig) -> list[str]:
    mode = m.mode or pipeline.target.mode
    lines = [f"{m.source} → {m.target or m.source}   (pipeline {pipeline.name}, mode {mode})"]
    if len(pipeline.mappings_for(m.source)) > 1:
        lines.append("  split: this source table also feeds " +
                     ", ".join(x.target or x.source for x in pipeline.mappings_for(m.source) if x is not m))
    if m.filter:
        lines.append(f"  only rows where {m.filter}; an update leaving this condition deletes the target row, "
                     f"one entering it inserts it")
    for source, rule in m.columns.items():
        if isinstance(rule, str):
            lines.append(f"  {source} → {rule}")
        else:
            lines.append(f"  {source} → {rule.to or source}" + _steps(rule, pipeline))
    for column in m.drop:
        lines.append(f"  {column}: not sent")
    lines.append("  other source columns: " + ("copied under their own names" if m.include_unlisted else "not sent"))
    for name, text in m.computed.items():
        lines.append(f"  {name} = {text}")
    for lookup in m.lookups:
        on = ", ".join(f"{k} = {v}" for k, v in lookup.match.items())
        cols = ", ".join(f"{k} → {v}" for k, v in lookup.columns.items())
        lines.append(f"  from {lookup.database}.{lookup.table} where {on}: {cols} "
                     f"(no match: {'row to dead letters' if lookup.missing == 'reject' else 'null'}; "
                     f"re-read every {lookup.reload:g}s)")
    for column, value in m.constants.items():
        lines.append(f"  {column} = {value!r} (constant)")
    if m.discriminator:
        lines.append(f"  {m.discriminator.column} = {(m.discriminator.value or m.source.rpartition('.')[2])!r}, "
                     f"part of the target key (merging several sources)")
    if m.surrogate_key:
        of = ", ".join(m.surrogate_key.columns or ["the source key"])
        lines.append(f"  {m.surrogate_key.column} = UUIDv5 of " + ("origin node + " if m.surrogate_key.origin else "")
                     + ("discriminator + " if m.discriminator else "")
                     + of + " (deterministic surrogate key)")
    meta = {k: v for k, v in m.metadata.model_dump().items() if v}
    for what, column in meta.items():
        lines.append(f"  {column} = the change's {'origin tier' if what == 'tier' else what.replace('_', ' ')}")
    lines.append(f"  when the target row was changed by someone else: {_CONFLICT_WORDS[m.conflict].format(**meta)}")
    key = m.key or ([m.surrogate_key.column] if m.surrogate_key else ["the source key, renamed"])
    if m.discriminator and m.discriminator.column not in key:
        key = list(key) + [m.discriminator.column]
    lines.append(f"  target key: {', '.join(key)}")
    return lines


_CONFLICT_WORDS = {
    "source_wins": "the source wins (conflict: source_wins)",
    "newer_wins": "kept if its {captured_at} is later than the change's commit time (conflict: newer_wins)",
    "higher_tier_wins": "kept, and the change sent to dead letters, if its {tier} names a higher tier than the "
                        "change's origin (NULL: the target's own tier) (conflict: higher_tier_wins)",
    "reject": "the change goes to dead letters when the row differs from the source's before-image, or an insert "
              "finds different values (conflict: reject)",
}


def _steps(rule: ColumnRule, pipeline: PipelineConfig) -> str:
    steps = []
    if rule.default is not None:
        steps.append(f"{rule.default!r} when NULL")
    if rule.trim:
        steps.append("trimmed")
    if rule.normalize:
        steps.append("normalised (full-width → half-width, spaces collapsed)")
    if rule.case:
        steps.append(f"{rule.case} case")
    if rule.cast:
        extra = f" from format {rule.format}" if rule.format else ""
        extra += f" with units {', '.join(f'{u}×{f}' for u, f in rule.units.items())}" if rule.units else ""
        steps.append(f"cast to {rule.cast}{extra}")
    if isinstance(rule.map, dict):
        steps.append(f"inline value map ({len(rule.map)} codes, unmapped: {rule.unmapped})")
    elif rule.map:
        vm = pipeline.value_maps.get(rule.map)
        where = "?" if vm is None else ("inline" if vm.values is not None else
                                        f"csv {vm.csv}" if vm.csv else f"table {vm.database}.{vm.table}")
        policy = vm.unmapped if vm else "?"
        policy = {"reject": "reject → dead letters", "default": f"default {vm.default!r}" if vm else "?"}.get(
            policy, policy)
        steps.append(f"value map {rule.map} ({where}; unmapped: {policy})")
    if rule.mask:
        steps.append({"hash": "masked: keyed HMAC-SHA256 (joins still match)", "id_card": "masked: 110101********123X",
                      "phone": "masked: 138****5678", "nullify": "masked: always NULL"}[rule.mask])
    return (": " + ", ".join(steps)) if steps else ""
