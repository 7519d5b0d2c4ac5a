"""Mapping rules: turn a source change event into the changes a target table receives.

This is the seam the rules engine grows from: a :class:`CompiledMapping` is
built once per source table from its :class:`~engine.config.MappingConfig`
and the table metadata of both sides, and ``map`` is then a tight loop over
precomputed column plans.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Callable, Literal

from .casts import caster
from .config import ColumnRule, MappingConfig, SyncMode
from .event import ChangeEvent, Op, Row, TableId
from .schema import TableInfo

ChangeKind = Literal["upsert", "insert", "delete", "truncate"]


@dataclass(slots=True)
class TargetChange:
    """One row operation on a target table, with the event that caused it."""

    kind: ChangeKind
    table: TableId
    key: tuple
    row: Row | None
    event: ChangeEvent
    key_columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class ColumnPlan:
    source: str
    target: str
    convert: Callable[[Any], Any] | None


class CompiledMapping:
    """One source table's rules, ready to apply to events."""

    def __init__(self, config: MappingConfig, source: TableInfo, source_key: tuple[str, ...],
                 target: TableId, default_mode: SyncMode, apply_truncate: bool = False):
        self.config = config
        self.source = source
        self.target = target
        self.mode: SyncMode = config.mode or default_mode
        self.apply_truncate = apply_truncate
        self.source_key = source_key
        self.plans: dict[str, ColumnPlan | None] = {}
        dropped = set(config.drop)
        for column in source.column_names:
            rule = config.columns.get(column)
            generated = source.column(column).generated  # computed by the database: never written unless named
            if column in dropped or (rule is None and (generated or not config.include_unlisted)):
                self.plans[column] = None
                continue
            if isinstance(rule, ColumnRule):
                self.plans[column] = ColumnPlan(column, rule.to or column, caster(rule.cast) if rule.cast else None)
            else:
                self.plans[column] = ColumnPlan(column, rule or column, None)
        self.constants = dict(config.constants)
        self.metadata = config.metadata
        renamed = {c: p.target for c, p in self.plans.items() if p}
        # with no casts, a row holding exactly the known columns maps by a precomputed list of pairs
        plain = all(p is None or p.convert is None for p in self.plans.values())
        self._renames = {c: renamed.get(c) for c in self.plans} if plain else None
        self._pairs = [(c, t) for c, t in renamed.items()] if plain else []
        if config.key:
            self.target_key = tuple(config.key)
        else:
            self.target_key = tuple(renamed.get(c, c) for c in source_key)
        self._key_getter = tuple_getter(self.target_key)

    def source_key_of_target_key(self) -> Callable[[tuple], tuple] | None:
        """Turns a target key back into its source key, where every target key column is a plain rename."""
        renamed_from = {p.target: p.source for p in self.plans.values() if p and p.convert is None}
        try:
            order = [self.source_key.index(renamed_from[c]) for c in self.target_key]
        except (KeyError, ValueError):
            return None
        if sorted(order) != list(range(len(self.source_key))):
            return None
        position = {source_i: target_i for target_i, source_i in enumerate(order)}
        return lambda key: tuple(key[position[i]] for i in range(len(key)))

    def target_columns(self) -> list[str]:
        """Every target column this mapping writes."""
        columns = [p.target for p in self.plans.values() if p]
        columns += list(self.constants)
        columns += [c for c in (self.metadata.op, self.metadata.captured_at, self.metadata.origin,
                                self.metadata.source_table, self.metadata.seq) if c]
        return columns

    def map_row(self, row: Row, event: ChangeEvent) -> Row:
        if self._renames is not None and row.keys() == self._renames.keys():  # the common case: renames only
            out = {target: row[source] for source, target in self._pairs}
            return self._add_fixed(out, event)
        out: Row = {}
        plans = self.plans
        for column, value in row.items():
            plan = plans.get(column, _UNKNOWN)
            if plan is _UNKNOWN:  # a column added to the source after the rules were compiled
                if not self.config.include_unlisted or column in self.config.drop:
                    continue
                out[column] = value
            elif plan is not None:
                out[plan.target] = plan.convert(value) if plan.convert else value
        return self._add_fixed(out, event)

    def _add_fixed(self, out: Row, event: ChangeEvent) -> Row:
        if self.constants:
            out.update(self.constants)
        meta = self.metadata
        if meta.op:
            out[meta.op] = event.op.value
        if meta.captured_at:
            out[meta.captured_at] = event.captured_at
        if meta.origin:
            out[meta.origin] = event.origin
        if meta.source_table:
            out[meta.source_table] = str(event.table)
        if meta.seq:
            out[meta.seq] = event.seq
        return out

    def _key_of(self, row: Row) -> tuple:
        return self._key_getter(row)

    def map(self, event: ChangeEvent) -> list[TargetChange]:
        """The target changes for one event, in the order they must run."""
        op = event.op
        if op is Op.TRUNCATE:
            return [TargetChange("truncate", self.target, (), None, event)] if self.apply_truncate else []
        if self.mode == "append":
            if op is Op.DELETE and not self.metadata.op:
                return []
            image = event.before if op is Op.DELETE else event.after
            if image is None:
                return []
            row = self.map_row(image, event)
            return [TargetChange("insert", self.target, (), row, event, ())]
        if op is Op.DELETE:
            if self.mode == "upsert" or event.before is None:
                return []
            row = self.map_row(event.before, event)
            return [TargetChange("delete", self.target, self._key_of(row), None, event, self.target_key)]
        if op is Op.TRUNCATE or event.after is None:
            return []
        row = self.map_row(event.after, event)
        key = self._key_of(row)
        changes = []
        if op is Op.UPDATE and event.before is not None and self.mode == "mirror":
            old_key = self._key_of(self.map_row({c: event.before.get(c) for c in self.source_key}, event))
            if old_key != key:  # the key itself changed: the old row goes away
                changes.append(TargetChange("delete", self.target, old_key, None, event, self.target_key))
        changes.append(TargetChange("upsert", self.target, key, row, event, self.target_key))
        return changes


_UNKNOWN = object()


def tuple_getter(columns: tuple[str, ...]) -> Callable[[Row], tuple]:
    """row → tuple of ``columns`` (None where a column is absent), at C speed when all are present."""
    if not columns:
        return lambda row: ()
    fast = itemgetter(*columns)
    single = len(columns) == 1

    def get(row: Row) -> tuple:
        try:
            value = fast(row)
        except KeyError:
            return tuple(row.get(c) for c in columns)
        return (value,) if single else value
    return get
