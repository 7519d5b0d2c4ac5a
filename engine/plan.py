"""Resolve a pipeline's configuration against the live databases, reporting every problem at once.

A :class:`PipelinePlan` holds what the runner needs: the two connectors, the
captured tables with their key columns, the compiled mappings and the target
tables' metadata. Building it checks that every table and column the rules
name exists, that each target key can be matched by an upsert, and that every
captured table has a key (or is appended as history).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from .config import Config, MappingConfig, PipelineConfig
from .conflict import ConflictRule
from .errors import ConfigError, TerminalError, TiersyncError, TransientError
from .event import TableId
from .expressions import ExpressionError
from .mapping import CompiledMapping, SplitMapping
from .registry import connector_for
from .rules import RuleResources
from .schema import ColumnInfo, TableInfo
from .seams import CapturedTable, Connector


@dataclass
class PipelinePlan:
    config: PipelineConfig
    node_id: str
    node_tier: str
    source: Connector
    target: Connector
    captured: list[CapturedTable]
    mappings: dict[TableId, CompiledMapping | SplitMapping]
    target_tables: dict[TableId, TableInfo]
    resources: RuleResources | None = None

    def close(self) -> None:
        self.source.close()
        self.target.close()

    def selected(self, tables: list[str] | None) -> list[CapturedTable]:
        """The captured tables named in ``tables`` (all of them for None); a name the pipeline does not
        capture is a ConfigError that lists the ones it does."""
        wanted = {self.source.qualify(t) for t in tables} if tables else None
        chosen = [t for t in self.captured if wanted is None or t.info.id in wanted]
        if wanted is not None and len(chosen) != len(wanted):
            known = ", ".join(str(t.info.id) for t in self.captured)
            raise ConfigError([f"pipeline {self.config.name} does not capture "
                               f"{', '.join(map(str, sorted(wanted)))}; its tables: {known}"])
        return chosen

    def encoded_tables(self) -> set[TableId]:
        """Captured tables whose rows may travel encoded (see :mod:`engine.encoded`): one mapping that only
        renames, onto target columns of exactly the same types (the reader still checks each table's shape)."""
        out = set()
        for table in self.captured:
            mapping = self.mappings.get(table.info.id)
            if type(mapping) is not CompiledMapping or not mapping.passes_encoded:
                continue
            target = self.target_tables.get(mapping.target)
            if target is None:
                continue
            targets = [target.column(mapping.plans[c.name].target) for c in table.info.columns]
            if all(t is not None and t.type == c.type for t, c in zip(targets, table.info.columns)):
                out.add(table.info.id)
        return out

    @property
    def target_tier(self) -> str:
        """The tier a target row written locally (not by tiersync) counts as: the target's node's."""
        return self.config.target.tier or self.node_tier

    def conflict_rules(self) -> dict[TableId, ConflictRule]:
        """Target tables whose mappings have a conflict policy other than source_wins, with what it needs."""
        out: dict[TableId, ConflictRule] = {}
        for mapping in self.mappings.values():
            for part in getattr(mapping, "parts", [mapping]):
                rule = conflict_rule(part)
                if rule is not None:
                    known = out.get(part.target)
                    compared = tuple(dict.fromkeys((known.compared if known else ()) + rule.compared))
                    out[part.target] = ConflictRule(rule.policy, rule.column, compared)
        return out


def conflict_rule(mapping: CompiledMapping) -> ConflictRule | None:
    """What one mapping's conflict policy needs of its target table (None: source_wins)."""
    rules, meta = mapping.config, mapping.config.metadata
    if rules.conflict == "newer_wins" and meta.captured_at:
        return ConflictRule("newer_wins", meta.captured_at)
    if rules.conflict == "higher_tier_wins" and meta.tier:
        return ConflictRule("higher_tier_wins", meta.tier)
    if rules.conflict == "reject" and mapping.mode != "append":
        return ConflictRule("reject", None, mapping.compared_columns())
    return None


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def source_tables(config: Config, pipeline: PipelineConfig, source: Connector,
                  problems: list[str]) -> list[CapturedTable]:
    """Describe the pipeline's captured tables and settle each one's key columns."""
    captured = []
    if pipeline.source.capture == "inbox":
        return [inbox_table(config, pipeline, source, name) for name in pipeline.source.tables]
    for name in pipeline.source.tables:
        table = source.qualify(name)
        info = source.describe(table)
        if info is None:
            problems.append(f"pipeline {pipeline.name}: source table {table} does not exist "
                            f"in database {pipeline.source.database!r}")
            continue
        mapping = pipeline.mapping_for(name)
        mode = (mapping.mode if mapping and mapping.mode else None) or pipeline.target.mode
        key = tuple(mapping.source_key) if mapping and mapping.source_key else info.primary_key
        for column in key:
            if info.column(column) is None:
                problems.append(f"pipeline {pipeline.name}: key column {column!r} is not in {table}"
                                f"{_suggest(column, info.column_names)}")
        if not key and mode != "append":
            problems.append(f"pipeline {pipeline.name}: table {table} has no primary key; name its key "
                            f"columns with source_key in its mapping, or replicate it with mode: append")
        captured.append(CapturedTable(info, key))
    return captured


def inbox_table(config: Config, pipeline: PipelineConfig, source: Connector, name: str) -> CapturedTable:
    """An exchange table as a received batch carries it: its key from the route, its columns as they come."""
    route = config.exchange.tables[name]
    mapping = pipeline.mapping_for(name)
    named = list(route.key) + ([c for c in list(mapping.columns) + list(mapping.drop) if c not in route.key]
                               if mapping else [])
    info = TableInfo(source.qualify(name), tuple(ColumnInfo(c, "") for c in named), tuple(route.key))
    return CapturedTable(info, tuple(route.key))


def build_plan(config: Config, pipeline: PipelineConfig, *, connect_target: bool = True) -> PipelinePlan:
    """Resolve ``pipeline`` against its databases; raise ConfigError listing every problem."""
    problems: list[str] = []
    if pipeline.source.capture == "inbox" or pipeline.target.outbox:
        from .network import prepare

        prepare(config)  # the exchange database is tiersync's own: its tables (and a SQLite file) are made here
    source_db = config.databases[pipeline.source.database]
    target_db = config.databases[pipeline.target.database]
    source = connector_for(source_db.url, source_db.state_schema)
    target = connector_for(target_db.url, target_db.state_schema)
    for label, connector in (("source", source), ("target", target)):
        if label == "target" and not connect_target:
            continue
        try:
            connector.check()
        except TransientError as exc:  # may come back: the runner retries, `check` reports it
            raise TransientError(f"pipeline {pipeline.name}: {label} database: {exc}") from None
        except TerminalError as exc:
            problems.append(f"pipeline {pipeline.name}: {label} database: {exc}")
    if problems:
        raise ConfigError(problems)
    captured = source_tables(config, pipeline, source, problems)
    if not problems:
        problems += [f"pipeline {pipeline.name}: {p}" for p in
                     source.capture_problems(pipeline.source, pipeline.name, captured)]
    mappings, target_tables, resources = compile_mappings(config, pipeline, source, target, captured, problems,
                                                          connect_target=connect_target)
    if problems:
        raise ConfigError(problems)
    return PipelinePlan(pipeline, config.node.id, config.node.tier, source, target, captured, mappings, target_tables,
                        resources)


def compile_mappings(config: Config, pipeline: PipelineConfig, source: Connector, target: Connector,
                     captured: list[CapturedTable], problems: list[str], *, connect_target: bool = True):
    """Every captured table's compiled mapping(s), the target tables they write, and the rules' resources."""
    mappings: dict[TableId, CompiledMapping | SplitMapping] = {}
    target_tables: dict[TableId, TableInfo] = {}
    try:
        resources = rule_resources(config, pipeline)
    except TiersyncError as exc:
        problems.append(f"pipeline {pipeline.name}: {exc}")
        return mappings, target_tables, None
    for table in captured:
        name = next(n for n in pipeline.source.tables if source.qualify(n) == table.info.id)
        parts = []
        for rules in pipeline.mappings_for(name) or [MappingConfig(source=name)]:
            target_id = target.qualify(rules.target or table.info.id.name)
            for rule_source in list(rules.columns) + list(rules.drop):
                if table.info.column(rule_source) is None:
                    problems.append(f"pipeline {pipeline.name}, mapping {name} → {target_id}: source column "
                                    f"{rule_source!r} is not in {table.info.id}"
                                    f"{_suggest(rule_source, table.info.column_names)}")
            try:
                mapping = CompiledMapping(rules, table.info, table.key, target_id, pipeline.target.mode,
                                          apply_truncate=pipeline.target.truncate == "apply", resources=resources)
            except (ExpressionError, TiersyncError) as exc:
                problems.append(f"pipeline {pipeline.name}, mapping {name} → {target_id}: {exc}")
                continue
            parts.append(mapping)
            problems += _check_target(pipeline, target, table, rules, mapping, target_tables, connect_target)
        if parts:
            mappings[table.info.id] = parts[0] if len(parts) == 1 else SplitMapping(parts)
    problems += _policy_clashes(pipeline, mappings)
    return mappings, target_tables, resources


def _policy_clashes(pipeline: PipelineConfig, mappings: dict) -> list[str]:
    """Mappings merging into one target table must settle conflicts the same way."""
    seen: dict[TableId, tuple] = {}
    problems = []
    for mapping in mappings.values():
        for part in getattr(mapping, "parts", [mapping]):
            rule = conflict_rule(part)
            policy = (part.config.conflict, rule.column if rule else None)
            if seen.setdefault(part.target, policy) != policy:
                problems.append(f"pipeline {pipeline.name}: mappings into {part.target} disagree on the conflict "
                                f"policy ({seen[part.target][0]} and {policy[0]}, or their metadata columns); "
                                f"one target table has one policy")
    return problems


def rule_resources(config: Config, pipeline: PipelineConfig) -> RuleResources:
    """The pipeline's value maps and lookups; tables are read through their database's connector."""
    connectors: dict[str, Connector] = {}

    def load_table(database: str, name: str) -> list[dict]:
        if database not in config.databases:
            raise ConfigError([f"database {database!r} is not declared under databases"])
        if database not in connectors:
            db = config.databases[database]
            connectors[database] = connector_for(db.url, db.state_schema)
        connector = connectors[database]
        info = connector.describe(connector.qualify(name))
        if info is None:
            raise ConfigError([f"table {name} does not exist in database {database!r}"])
        key = info.primary_key or tuple(info.column_names)
        scanner = connector.table_scanner(CapturedTable(info, key))
        rows: list[dict] = []
        try:
            after = None
            while True:
                chunk = scanner.chunk(after, 10000, None)
                rows += chunk
                if len(chunk) < 10000:
                    return rows
                after = tuple(chunk[-1][c] for c in key)
        finally:
            scanner.close()

    return RuleResources(pipeline, config.base_dir, config, load_table)


def _check_target(pipeline: PipelineConfig, target: Connector, table: CapturedTable, rules: MappingConfig,
                  mapping: CompiledMapping, target_tables: dict, connect_target: bool) -> list[str]:
    """One compiled mapping against its target table: columns, key, and the source columns its rules name."""
    problems: list[str] = []
    name = rules.source
    target_id = mapping.target
    if not connect_target or pipeline.target.outbox:  # an outbox's tables are exchange tables, not its own
        return problems
    info = target_tables.get(target_id) or target.describe_target(target_id, table.info, mapping)
    where = f"pipeline {pipeline.name}, mapping {name} → {target_id}"
    if info is None:
        problems.append(f"{where}: target table {target_id} does not exist")
        return problems
    target_tables[target_id] = info
    for column in mapping.target_columns():
        target_column = info.column(column)
        if target_column is None:
            problems.append(f"{where}: column {column!r} is not in the target table"
                            f"{_suggest(column, info.column_names)}")
        elif target_column.generated:
            problems.append(f"{where}: column {column!r} is generated in the target and cannot be written")
    if rules.conflict not in target.conflict_policies:
        problems.append(f"{where}: conflict: {rules.conflict} is not supported by this target database "
                        f"(supported: {', '.join(target.conflict_policies)})")
    if mapping.mode != "append":
        if not mapping.target_key:
            problems.append(f"{where}: no target key; set key: [...] in the mapping")
        elif set(mapping.target_key) not in [set(k) for k in target.unique_keys(target_id)]:
            problems.append(f"{where}: target key ({', '.join(mapping.target_key)}) is not the primary key or "
                            f"a unique constraint of {target_id}; add one or set key: [...] to one that is")
    return problems
