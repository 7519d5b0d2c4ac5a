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

from .config import ColumnRule, MappingConfig, SyncMode
from .conflict import NO_ROW
from .encoded import EncodedRow, RowEncoding
from .errors import TerminalError
from .event import CREATE, DELETE, READ, TRUNCATE, UPDATE, ChangeEvent, Row, TableId
from .expressions import RUN_ERRORS, ExpressionError, compile_expression
from .functions import surrogate_key
from .rules import RuleResources, column_converter, expression_functions
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
    expected: Any = None  # conflict: reject — the target row this change presumes (engine.conflict.NO_ROW: none)


@dataclass(frozen=True)
class ColumnPlan:
    source: str
    target: str
    convert: Callable[[Any], Any] | None


class CompiledMapping:
    """One source table's rules for one target table, ready to apply to events.

    Everything is decided here, once: each column's converter, the compiled
    expressions (filter, computed columns), lookups, the key. ``map`` is then
    a loop over precomputed plans; a mapping of plain renames keeps its
    single-dict-comprehension fast path.
    """

    def __init__(self, config: MappingConfig, source: TableInfo, source_key: tuple[str, ...],
                 target: TableId, default_mode: SyncMode, apply_truncate: bool = False,
                 resources: RuleResources | None = None):
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
                try:
                    convert = column_converter(rule, column, resources)
                except TerminalError as exc:
                    raise TerminalError(f"columns.{column}: {exc}") from None
                self.plans[column] = ColumnPlan(column, rule.to or column, convert)
            else:
                self.plans[column] = ColumnPlan(column, rule or column, None)
        self.constants = dict(config.constants)
        if config.discriminator:
            self.constants[config.discriminator.column] = config.discriminator.value or source.id.name
        self.metadata = config.metadata
        columns = list(source.column_names)
        functions = expression_functions(resources)
        self.computed = [(name, _compile(f"computed.{name}", text, columns, functions))
                         for name, text in config.computed.items()]
        self.filter = _compile("filter", config.filter, columns, functions) if config.filter else None
        self._filter = self.filter.run if self.filter else None
        self.lookups = [resources.lookup(c).enricher() if resources else _no_resources(c) for c in config.lookups]
        self.surrogate = config.surrogate_key
        self._surrogate_of = tuple_getter(tuple(self.surrogate.columns or source_key)) if self.surrogate else None
        self._surrogate_prefix = (self.constants[config.discriminator.column],) if config.discriminator else ()
        renamed = {c: p.target for c, p in self.plans.items() if p}
        # a row holding exactly the known columns maps by precomputed lists of pairs (see map_row)
        self._width = len(self.plans)
        self._kept = frozenset(renamed)
        # a dropped column replaced by an unknown one would be copied by the general path: look for them
        self._dropped = frozenset(c for c, p in self.plans.items() if p is None) if config.include_unlisted \
            else frozenset()
        self._pairs = [(c, p.target) for c, p in self.plans.items() if p and p.convert is None]
        self._converted = [(c, p.target, p.convert) for c, p in self.plans.items() if p and p.convert is not None]
        self._computed = [(name, e.run, e) for name, e in self.computed]
        # the target row of the common case starts as a copy of its keys: one allocation, no resizing while filled
        self._template = dict.fromkeys([t for _, t in self._pairs] + [t for _, t, _ in self._converted]
                                       + [name for name, _ in self.computed])
        self._extra = bool(self.lookups or self.surrogate or self.computed)
        meta = self.metadata
        self._fixed = bool(self.constants) or any((meta.op, meta.captured_at, meta.origin, meta.source_table, meta.seq,
                                                   meta.tier))
        if config.key:
            self.target_key = tuple(config.key)
        else:
            self.target_key = tuple(renamed.get(c, c) for c in source_key)
            if self.surrogate:
                self.target_key = (self.surrogate.column,)
        if config.discriminator and config.discriminator.column not in self.target_key:
            self.target_key += (config.discriminator.column,)
        self._key_getter = tuple_getter(self.target_key)
        self._append, self._mirror = self.mode == "append", self.mode == "mirror"
        self._source_key_getter = tuple_getter(tuple(source_key))
        self._key_from_source_key = self._key_depends_on_source_key_only()
        # rules that only rename (or keep) every column: encoded rows pass through without being decoded
        self.passes_encoded = (
            not self._extra and not self._fixed and self.filter is None and not self._converted
            and config.conflict == "source_wins" and all(self.plans.values())
            and self.target_key == tuple(renamed.get(c, c) for c in source_key))
        self._renamed = renamed
        self._encodings: dict[RowEncoding, RowEncoding] = {}
        self._compared = self.compared_columns()
        if config.conflict == "reject" and self.mode != "append":
            self.map = self._map_presuming  # the other mappings keep the plain hot path

    def compared_columns(self) -> tuple[str, ...]:
        """The target columns copied from source columns: what ``conflict: reject`` compares with the target."""
        return tuple(dict.fromkeys(p.target for p in self.plans.values() if p))

    def _key_depends_on_source_key_only(self) -> bool:
        """Whether the target key is a function of the source key alone (then an update keeping it keeps ours)."""
        by_target = {p.target: p.source for p in self.plans.values() if p}
        for column in self.target_key:
            if column in self.constants:
                continue
            if self.surrogate and column == self.surrogate.column:
                if not set(self.surrogate.columns or self.source_key) <= set(self.source_key):
                    return False
                continue
            if column in {name for name, _ in self.computed} or by_target.get(column) not in self.source_key:
                return False
        return True

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
        columns += [name for name, _ in self.computed]
        columns += [t for lookup in self.config.lookups for t in lookup.columns.values()]
        if self.surrogate:
            columns.append(self.surrogate.column)
        columns += [c for c in (self.metadata.op, self.metadata.captured_at, self.metadata.origin,
                                self.metadata.source_table, self.metadata.seq, self.metadata.tier) if c]
        return list(dict.fromkeys(columns))

    def _encoded(self, row: EncodedRow) -> EncodedRow:
        """An encoded row under the target's column names (the same object when nothing is renamed)."""
        encoding = self._encodings.get(row.encoding)
        if encoding is None:
            encoding = self._encodings[row.encoding] = row.encoding.renamed(self._renamed)
        return row if encoding is row.encoding else EncodedRow(row.line, encoding)

    def map_row(self, row: Row, event: ChangeEvent) -> Row:
        """The target row for one source image (``after``, or ``before`` for deletes and old keys)."""
        if type(row) is EncodedRow:  # only mappings that pass encoded rows see one (see map)
            return self._encoded(row)
        # the common case: the row holds exactly the known columns (as many, none of them missing)
        if len(row) == self._width and (not self._dropped or row.keys() >= self._dropped):
            try:
                out = self._template.copy()
                for source, target in self._pairs:
                    out[target] = row[source]
                for source, target, convert in self._converted:
                    out[target] = convert(row[source])
            except KeyError:
                if row.keys() >= self._kept:  # raised by a converter, not a missing column
                    raise
                out = self._map_columns(row)
        else:
            out = self._map_columns(row)
        if self._extra:
            before = event.before
            try:
                for name, run, expression in self._computed:  # noqa: B007 - expression: for the error below
                    out[name] = run(row, before, event)
            except RUN_ERRORS as exc:
                raise expression.fault(exc) from None
            for enrich in self.lookups:
                enrich(row, out)
            if self.surrogate:
                out[self.surrogate.column] = self._surrogate(row, event)
        return self._add_fixed(out, event) if self._fixed else out

    def _map_columns(self, row: Row) -> Row:
        """Column by column, for a row with missing columns or columns added after the rules were compiled."""
        out = {}
        plans = self.plans
        for column, value in row.items():
            plan = plans.get(column, _UNKNOWN)
            if plan is _UNKNOWN:  # a column added to the source after the rules were compiled
                if not self.config.include_unlisted or column in self.config.drop:
                    continue
                out[column] = value
            elif plan is not None:
                out[plan.target] = plan.convert(value) if plan.convert else value
        return out

    def _add_fixed(self, out: Row, event: ChangeEvent) -> Row:
        if self.constants:
            out.update(self.constants)
        meta = self.metadata
        if meta.op:
            out[meta.op] = event.op._value_
        if meta.captured_at:
            out[meta.captured_at] = event.captured_at
        if meta.origin:
            out[meta.origin] = event.origin
        if meta.source_table:
            out[meta.source_table] = str(event.table)
        if meta.seq:
            out[meta.seq] = event.seq
        if meta.tier:
            out[meta.tier] = event.origin_tier or None
        return out

    def _surrogate(self, row: Row, event: ChangeEvent) -> str:
        """UUIDv5 of (origin node,) (discriminator value,) source key: merged sources never collide."""
        values = self._surrogate_prefix + self._surrogate_of(row)
        return surrogate_key(event.origin, *values) if self.surrogate.origin else surrogate_key(*values)

    def passes(self, image: Row, event: ChangeEvent) -> bool:
        """Whether ``image`` passes the row filter (always, without one)."""
        if self.filter is None:
            return True
        result = self.filter.evaluate(image, event.before, event)
        if result is True or result is False:
            return result
        raise ExpressionError(f"filter gave {result!r}, not true or false")

    def _was_in(self, event: ChangeEvent) -> bool:
        """Whether the old image passed the filter; unknown (no old image, or one too partial) counts as yes."""
        if event.before is None:
            return True
        try:
            return self.passes(event.before, event)
        except ExpressionError:
            return True

    def _key_of(self, row: Row) -> tuple:
        return self._key_getter(row)

    def _map_presuming(self, event: ChangeEvent) -> list[TargetChange]:
        """``map`` for conflict: reject: each change also says which target row it presumes."""
        changes = CompiledMapping.map(self, event)
        for change in changes:
            change.expected = self._expected(change, event)
        return changes

    def _expected(self, change: TargetChange, event: ChangeEvent):
        """The target row ``change`` presumes, on the compared columns: NO_ROW, a row, or None (cannot tell)."""
        if event.op is CREATE or event.op is READ:
            return NO_ROW
        if event.before is None:
            return None
        if change.kind == "upsert" and not self._was_in(event):
            return NO_ROW  # moved into the filter: the target never had it
        try:
            before = self.map_row(event.before, event)
        except Exception:  # noqa: BLE001 - a partial before-image the rules cannot map: nothing to compare
            return None
        if self._key_getter(before) != change.key:
            return NO_ROW if change.kind == "upsert" else None
        return {c: before[c] for c in self._compared if c in before}

    def map(self, event: ChangeEvent) -> list[TargetChange]:
        """The target changes for one event, in the order they must run.

        An :class:`EncodedRow` ``after`` image passes through as it is where the rules allow it and the key
        stays the same; otherwise it is decoded into the event first (``event.after`` becomes its dict).
        """
        op = event.op
        if type(event.after) is EncodedRow:
            if (self.passes_encoded and op is not TRUNCATE
                    and (op is not UPDATE or not self._mirror or event.before is None
                         or self._source_key_getter(event.before) == event.key)):
                if self._append:
                    return [TargetChange("insert", self.target, (), self._encoded(event.after), event, ())]
                return [TargetChange("upsert", self.target, event.key, self._encoded(event.after), event,
                                     self.target_key)]
            event.after = event.after.values()
        if self._append or op is DELETE or op is TRUNCATE:
            return self._map_other(event)
        after = event.after
        if after is None:
            return []
        if self._filter is not None:
            try:
                verdict = self._filter(after, event.before, event)
            except RUN_ERRORS as exc:
                raise self.filter.fault(exc) from None
            if verdict is not True and not self.passes(after, event):
                # out of the filter: an update that moves the row out deletes it at the target
                if op is not UPDATE or not self._mirror or not self._was_in(event):
                    return []
                row = self.map_row(event.before if _complete(event.before, after) else after, event)
                return [TargetChange("delete", self.target, self._key_getter(row), None, event, self.target_key)]
        row = self.map_row(after, event)
        key = self._key_getter(row)
        if op is UPDATE and self._mirror and event.before is not None:
            if not (self._key_from_source_key and
                    self._source_key_getter(event.before) == self._source_key_getter(after)):
                old_key = self._old_key(event)
                if old_key != key:  # the key itself changed: the old row goes away
                    return [TargetChange("delete", self.target, old_key, None, event, self.target_key),
                            TargetChange("upsert", self.target, key, row, event, self.target_key)]
        return [TargetChange("upsert", self.target, key, row, event, self.target_key)]

    def _map_other(self, event: ChangeEvent) -> list[TargetChange]:
        """Truncates, deletes, and every change of an append (history) mapping."""
        op = event.op
        if op is TRUNCATE:
            return [TargetChange("truncate", self.target, (), None, event)] if self.apply_truncate else []
        if self._append:
            if op is DELETE and not self.metadata.op:
                return []
            image = event.before if op is DELETE else event.after
            if image is None or (self.filter is not None and not self.passes(image, event)):
                return []
            row = self.map_row(image, event)
            return [TargetChange("insert", self.target, (), row, event, ())]
        if self.mode == "upsert" or event.before is None:
            return []
        if self.filter is not None and not self._was_in(event):
            return []
        row = self.map_row(event.before, event)
        return [TargetChange("delete", self.target, self._key_of(row), None, event, self.target_key)]

    def _old_key(self, event: ChangeEvent) -> tuple:
        """The target key of the old image (the full image when the source sent it, else its key columns)."""
        before = event.before
        if _complete(before, event.after):
            return self._key_of(self.map_row(before, event))
        partial = dict(event.after)
        partial.update({c: before.get(c) for c in self.source_key})
        return self._key_of(self.map_row(partial, event))


class SplitMapping:
    """One source table mapped to several targets: each part maps every event; deletes before upserts."""

    def __init__(self, parts: list[CompiledMapping]):
        self.parts = parts
        first = parts[0]
        self.target, self.mode, self.source, self.source_key = first.target, first.mode, first.source, first.source_key
        self.target_key = first.target_key

    def map(self, event: ChangeEvent) -> list[TargetChange]:
        changes: list[TargetChange] = []
        for part in self.parts:
            changes.extend(part.map(event))
        return changes

    def source_key_of_target_key(self):
        return None  # a reload cannot tell which part a target row came from: extras are left to reconcile


def _compile(where: str, text: str, columns: list[str], functions: dict):
    try:
        return compile_expression(text, columns=columns, functions=functions)
    except ExpressionError as exc:
        raise ExpressionError(f"{where}: {exc}") from None


def _complete(before: Row | None, after: Row | None) -> bool:
    return before is not None and (after is None or before.keys() >= after.keys())


def _no_resources(config):
    raise TerminalError(f"lookup {config.table}: the mapping was compiled without database access")


_UNKNOWN = object()


def tuple_getter(columns: tuple[str, ...]) -> Callable[[Row], tuple]:
    """row → tuple of ``columns`` (None where a column is absent); an itemgetter when all are present."""
    if not columns:
        return lambda row: ()
    if len(columns) == 1:
        (column,) = columns

        def get_one(row: Row) -> tuple:
            try:
                return (row[column],)
            except KeyError:
                return (None,)
        return get_one
    fast = itemgetter(*columns)

    def get(row: Row) -> tuple:
        try:
            return fast(row)
        except KeyError:
            return tuple(row.get(c) for c in columns)
    return get
