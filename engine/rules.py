"""What compiled mappings need besides their own config: value maps, lookup tables, the mask key.

:class:`RuleResources` is built once per pipeline plan. Value maps from CSV
files are read at build time; maps and lookups from database tables are read
through the connector's table scanner (no SQL here) and re-read at a batch
boundary when older than their ``reload`` seconds. Column rules become one
converter function each (:func:`column_converter`), so the per-row cost is a
chain of plain calls.
"""

from __future__ import annotations

import csv
import logging
import time
import weakref
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

from .casts import CASTS, caster
from .config import Config, MappingConfig, PipelineConfig
from .errors import TerminalError, TiersyncError
from .expressions import ExpressionError, compile_expression
from .functions import (
    FUNCTIONS,
    keyed_hash,
    mask_id_card,
    mask_phone,
    memo_text,
    normalize_text,
    parse_date,
    parse_number,
)
from .ruleconfig import ColumnRule, LookupConfig, ValueMapConfig
from .yamlsource import LoadedYaml

log = logging.getLogger(__name__)

_MISSING = object()


class Unmapped(ValueError):
    """A value not in a value map whose policy is reject (the row goes to the dead-letter table)."""


class ValueMap:
    """A code table with its unmapped policy; ``data`` is refreshed in place on reload.

    Each column using the map converts through its own copy of the codes (:class:`_ColumnCodes`): a found
    code costs one dict lookup; the copies are refreshed with ``data``.
    """

    def __init__(self, name: str, config: ValueMapConfig, data: dict, loader: Callable[[], dict] | None = None):
        self.name = name
        self.config = config
        self.data = _with_number_keys(data)
        self.loader = loader
        self.loaded_at = time.monotonic()
        self._columns: list[weakref.ref[_ColumnCodes]] = []  # the converters' copies, while they are in use

    def refresh(self, now: float) -> bool:
        """Re-read a table map; its dicts are updated in place (mapping and refreshing share one thread)."""
        if self.loader is None or now - self.loaded_at < self.config.reload:
            return False
        fresh = _with_number_keys(self.loader())
        self._columns = [ref for ref in self._columns if ref() is not None]
        for codes in [self.data] + [ref() for ref in self._columns]:
            if codes is not None:
                codes.clear()
                codes.update(fresh)
        self.loaded_at = now
        log.info("value map %s reloaded (%d codes)", self.name, len(self.data))
        return True

    def converter(self, column: str) -> Callable[[Any], Any]:
        """value → code; NULL stays NULL; a value not found is tried as text, then the unmapped policy applies."""
        codes = _ColumnCodes(self.data)
        policy, default, name, get = self.config.unmapped, self.config.default, self.name, codes.get

        def unmapped(value):
            if value is None:
                return None
            if not isinstance(value, str):
                found = get(str(value), _MISSING)
                if found is not _MISSING:
                    return found
            if policy == "keep":
                return value
            if policy == "null":
                return None
            if policy == "default":
                return default
            raise Unmapped(f"value {value!r} of column {column!r} is not in value map {name!r}")
        codes.unmapped = unmapped
        self._columns.append(weakref.ref(codes))
        return codes.__getitem__


class _ColumnCodes(dict):
    """One column's copy of a value map's codes: lookups of found codes run at dict speed, misses (and NULL,
    never a key) go to ``unmapped``."""

    __slots__ = ("unmapped", "__weakref__")

    def __missing__(self, value):
        return self.unmapped(value)


def _with_number_keys(data: dict) -> dict:
    """Codes read as text also match integer source values ("01" stays text-only); NULL is never a code."""
    out = {key: value for key, value in data.items() if key is not None}
    for key, value in data.items():
        if isinstance(key, str) and key.isdigit() and (key == "0" or not key.startswith("0")):
            out.setdefault(int(key), value)
    return out


class Lookup:
    """A whole reference table in memory, by key: enriches rows with some of its columns."""

    def __init__(self, config: LookupConfig, loader: Callable[[], list[dict]]):
        self.config = config
        self.loader = loader
        self.index: dict[tuple, dict] = {}
        self.loaded_at = 0.0
        self._load(time.monotonic())

    def _load(self, now: float) -> None:
        on = list(self.config.match)
        self.index = {tuple(_norm_key(r.get(c)) for c in on): r for r in self.loader()}
        self.loaded_at = now

    def refresh(self, now: float) -> bool:
        if now - self.loaded_at < self.config.reload:
            return False
        self._load(now)
        log.info("lookup %s reloaded (%d rows)", self.config.table, len(self.index))
        return True

    def enricher(self) -> Callable[[dict, dict], None]:
        source_columns = list(self.config.match.values())
        wanted = list(self.config.columns.items())
        reject = self.config.missing == "reject"
        table, owner = self.config.table, self

        def enrich(row: dict, out: dict) -> None:
            key = tuple(_norm_key(row.get(c)) for c in source_columns)
            found = owner.index.get(key)
            if found is None:
                if reject:
                    raise Unmapped(f"no row in lookup table {table} for {dict(zip(source_columns, key))}")
                for _, target in wanted:
                    out[target] = None
                return
            for column, target in wanted:
                out[target] = found.get(column)
        return enrich


def _norm_key(value: Any) -> Any:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class RuleResources:
    """Value maps, lookups and the mask key of one pipeline."""

    def __init__(self, pipeline: PipelineConfig, base_dir: str | Path = ".", config: Config | None = None,
                 load_table: Callable[[str, str], list[dict]] | None = None):
        self.pipeline = pipeline
        self.base_dir = Path(base_dir)
        self.load_table = load_table
        self.value_maps: dict[str, ValueMap] = {}
        self.lookups: list[Lookup] = []
        self.mask_key = pipeline.mask_key.encode() if pipeline.mask_key else None
        for name, vm in pipeline.value_maps.items():
            self.value_maps[name] = self._value_map(name, vm)

    def _value_map(self, name: str, vm: ValueMapConfig) -> ValueMap:
        if vm.values is not None:
            return ValueMap(name, vm, dict(vm.values))
        if vm.csv is not None:
            return ValueMap(name, vm, read_csv_map(self.base_dir / vm.csv, vm.key, vm.value))
        if self.load_table is None:
            raise TerminalError(f"value map {name}: table maps need the database {vm.database!r}")
        database, table = vm.database, vm.table

        def load() -> dict:
            return {_norm_key(r.get(vm.key)): r.get(vm.value) for r in self.load_table(database, table)}
        return ValueMap(name, vm, load(), load)

    def lookup(self, config: LookupConfig) -> Lookup:
        if self.load_table is None:
            raise TerminalError(f"lookup {config.table}: needs the database {config.database!r}")
        lookup = Lookup(config, lambda: self.load_table(config.database, config.table))
        self.lookups.append(lookup)
        return lookup

    def refresh(self) -> None:
        """Re-read table maps and lookups older than their reload interval (called between batches)."""
        now = time.monotonic()
        for part in list(self.value_maps.values()) + self.lookups:
            try:
                part.refresh(now)
            except TiersyncError as exc:  # the database is away: keep what is cached, try again next interval
                part.loaded_at = now
                log.warning("could not re-read %s (%s); keeping the cached copy", _label(part), exc)


def _label(part) -> str:
    return f"value map {part.name}" if isinstance(part, ValueMap) else f"lookup {part.config.table}"


def read_csv_map(path: Path, key: str, value: str) -> dict:
    if not path.is_file():
        raise TerminalError(f"value map file {path} does not exist")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in (key, value) if c not in (reader.fieldnames or [])]
        if missing:
            have = ", ".join(reader.fieldnames or [])
            raise TerminalError(f"{path}: no column {', '.join(missing)}; columns: {have}")
        data = {}
        for line, record in enumerate(reader, start=2):
            code = record[key]
            if code in data and data[code] != record[value]:
                raise TerminalError(f"{path}:{line}: code {code!r} is mapped twice, to different values")
            data[code] = record[value]
        return data


def column_converter(rule: ColumnRule, column: str, resources: RuleResources | None) -> Callable[[Any], Any] | None:
    """One function doing the rule's steps in order: default → trim/normalize/case → cast → map → mask."""
    steps: list[Callable[[Any], Any]] = []
    if rule.trim:
        steps.append(_text_step(str.strip))
    if rule.normalize:
        steps.append(_text_step(normalize_text))
    if rule.case:
        steps.append(_text_step(str.upper if rule.case == "upper" else str.lower))
    if rule.cast:
        steps.append(_cast_step(rule))
    if rule.map is not None:
        if isinstance(rule.map, dict):
            inline = ValueMapConfig(values=rule.map, unmapped=rule.unmapped if rule.unmapped != "default" else "keep")
            steps.append(ValueMap(f"{column} (inline)", inline, dict(rule.map)).converter(column))
        else:
            if resources is None or rule.map not in resources.value_maps:
                raise TerminalError(f"no value map named {rule.map!r}")
            steps.append(resources.value_maps[rule.map].converter(column))
    if rule.mask:
        steps.append(_mask_step(rule.mask, column, resources))
    default = rule.default
    if not steps and default is None:
        return None
    if len(steps) == 1 and default is None:
        return steps[0]  # every step keeps NULL as NULL

    def convert(value):
        if value is None:
            if default is None:
                return None
            value = default
        for step in steps:
            value = step(value)
            if value is None:
                return None
        return value
    return convert


def _text_step(change: Callable[[str], str]) -> Callable[[Any], Any]:
    """A step on text only: other values (NULL included) pass unchanged."""
    def step(value):
        return change(value) if isinstance(value, str) else value
    return step


def _cast_step(rule: ColumnRule) -> Callable[[Any], Any]:
    """The rule's cast as one step keeping NULL as NULL. Dates and times read with a format remember the
    results of recent texts (strptime costs more than the rest of a row)."""
    cast, fmt, units = rule.cast, rule.format, rule.units
    if units and cast in ("int", "float", "decimal"):
        return _unit_cast(cast, units)
    if fmt and cast == "date":
        return memo_text(lambda v: parse_date(v, fmt))
    if fmt and cast in ("timestamp", "timestamptz", "time"):
        final = CASTS[cast]
        parse = FUNCTIONS["parse_timestamp"]
        return memo_text(lambda v: None if v is None else final(parse(v, fmt) if isinstance(v, str) else v))
    if fmt and cast == "text":
        return lambda v: None if v is None else \
            v.strftime(fmt) if hasattr(v, "strftime") and not isinstance(v, str) else CASTS["text"](v)
    return caster(cast)


def _unit_cast(cast: str, units: dict) -> Callable[[Any], Any]:
    """A number with a unit ("12.5万元" with 万元: 10000) cast to int, float or decimal."""
    final = CASTS[cast]
    decimal = cast == "decimal"
    factors = sorted(((u, Decimal(str(f))) for u, f in units.items()), key=lambda p: -len(p[0]))

    def with_units(value):
        if isinstance(value, str):  # fast path: ASCII digits and a known unit ("12.5万元")
            for unit, factor in factors:
                if value.endswith(unit):
                    number = value[:-len(unit)]
                    if number.isascii() and number.replace(".", "", 1).isdigit():
                        return Decimal(number) * factor if decimal else final(Decimal(number) * factor)
                    break
        elif value is None:
            return None
        return final(parse_number(value, units))
    return with_units


def _mask_step(mask: str, column: str, resources: RuleResources | None) -> Callable[[Any], Any]:
    """Every mask keeps NULL as NULL."""
    if mask == "hash":
        if resources is None or resources.mask_key is None:
            raise TerminalError("mask: hash needs the pipeline's mask_key")
        step = keyed_hash(resources.mask_key)
    elif mask == "id_card":
        step = mask_id_card
    elif mask == "phone":
        step = mask_phone
    else:
        def step(value):
            return None
    return step


def expression_functions(resources: RuleResources | None) -> dict:
    """The function table, with hash() bound to the pipeline's mask key when it has one."""
    if resources is None or resources.mask_key is None:
        return FUNCTIONS
    return {**FUNCTIONS, "hash": keyed_hash(resources.mask_key)}


# ------------------------------------------------------------------ checks without databases

def offline_problems(pipeline: PipelineConfig, index: int, mapping: MappingConfig, config: Config,
                     source: LoadedYaml) -> list[str]:
    """Every problem of one mapping's rules that can be found from the file alone, with file:line:column."""
    base = ("pipelines", config.pipelines.index(pipeline), "mappings", index)
    problems: list[str] = []
    functions = {**FUNCTIONS, "hash": keyed_hash(b"check")}

    def at(path: tuple, offset: int | None = None) -> str:
        line = source.line_of(path)
        column = source.column_of(path)
        where = f"{source.file}:{line}" if line else source.file
        if column and line:
            if offset is not None:  # inside a quoted scalar, the text starts one column later
                raw = _lines(source.file)[line - 1] if line <= len(_lines(source.file)) else ""
                offset += 1 if raw[column - 1:column] in ("'", '"') else 0
            where += f":{column + (offset or 0)}"
        return where

    expressions = [(("filter",), mapping.filter)] if mapping.filter else []
    expressions += [(("computed", name), text) for name, text in mapping.computed.items()]
    for path, text in expressions:
        try:
            compile_expression(text, functions=functions)
        except ExpressionError as exc:
            problems.append(f"{at(base + path, _column_in(exc, text))}: {'.'.join(path)}: {exc}")
    for name, rule in mapping.columns.items():
        if isinstance(rule, ColumnRule):
            where = base + ("columns", name)
            if isinstance(rule.map, str) and rule.map not in pipeline.value_maps:
                known = list(pipeline.value_maps)
                hint = _suggest(rule.map, known) or (f"; maps: {', '.join(known)}" if known else
                                                     "; declare it under the pipeline's value_maps")
                problems.append(f"{at(where + ('map',))}: columns.{name}: no value map named {rule.map!r}{hint}")
            if rule.mask == "hash" and not pipeline.mask_key:
                problems.append(f"{at(where + ('mask',))}: columns.{name}: mask: hash needs mask_key on the pipeline "
                                f"(e.g. mask_key: ${{TIERSYNC_MASK_KEY}})")
    if mapping.conflict == "newer_wins" and not mapping.metadata.captured_at:
        problems.append(f"{at(base + ('conflict',))}: conflict: newer_wins needs metadata: {{captured_at: COLUMN}}, "
                        f"the target column holding the commit time of each row's last change")
    if mapping.conflict == "higher_tier_wins" and not mapping.metadata.tier:
        problems.append(f"{at(base + ('conflict',))}: conflict: higher_tier_wins needs metadata: {{tier: COLUMN}}, "
                        f"the target column holding the tier of the node that last wrote each row")
    if mapping.conflict != "source_wins" and (mapping.mode or pipeline.target.mode) == "append":
        problems.append(f"{at(base + ('conflict',))}: conflict: {mapping.conflict} has no meaning in mode append "
                        f"(history rows are only inserted)")
    for i, lookup in enumerate(mapping.lookups):
        if lookup.database not in config.databases:
            problems.append(f"{at(base + ('lookups', i, 'database'))}: lookup database {lookup.database!r} is not "
                            f"declared under databases{_suggest(lookup.database, list(config.databases))}")
    if index == 0:  # the pipeline's value maps, once
        maps = ("pipelines", config.pipelines.index(pipeline), "value_maps")
        for name, vm in pipeline.value_maps.items():
            if vm.database and vm.database not in config.databases:
                problems.append(f"{at(maps + (name, 'database'))}: value map {name}: database {vm.database!r} is "
                                f"not declared under databases{_suggest(vm.database, list(config.databases))}")
            if vm.csv:
                path = Path(source.file).parent / vm.csv
                try:
                    read_csv_map(path, vm.key, vm.value)
                except TerminalError as exc:
                    problems.append(f"{at(maps + (name, 'csv'))}: value map {name}: {exc}")
    return problems


def raw_expression_problems(data: dict, source: LoadedYaml) -> list[str]:
    """Expression problems found on the raw file, so they are reported along with shape errors."""
    problems: list[str] = []
    functions = {**FUNCTIONS, "hash": keyed_hash(b"check")}
    pipelines = data.get("pipelines") if isinstance(data.get("pipelines"), list) else []
    for i, pipeline in enumerate(pipelines):
        mappings = pipeline.get("mappings") if isinstance(pipeline, dict) else None
        for j, mapping in enumerate(mappings if isinstance(mappings, list) else []):
            if not isinstance(mapping, dict):
                continue
            computed = mapping.get("computed") if isinstance(mapping.get("computed"), dict) else {}
            found = [(("filter",), mapping.get("filter"))] if isinstance(mapping.get("filter"), str) else []
            found += [(("computed", k), v) for k, v in computed.items() if isinstance(v, str)]
            for path, text in found:
                try:
                    compile_expression(text, functions=functions)
                except ExpressionError as exc:
                    full = ("pipelines", i, "mappings", j) + path
                    line, column = source.line_of(full), source.column_of(full)
                    where = f"{source.file}:{line}"
                    if column:
                        raw = _lines(source.file)[line - 1] if line and line <= len(_lines(source.file)) else ""
                        quoted = 1 if raw[column - 1:column] in ("'", '"') else 0
                        where += f":{column + _column_in(exc, text) + quoted}"
                    problems.append(f"{where}: {'.'.join(path)}: {exc}")
    return problems


def _lines(file: str) -> list[str]:
    try:
        return Path(file).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []


def _column_in(exc: ExpressionError, text: str) -> int:
    """Offset, inside the expression, of what the error is about: a name it does not know, or the parse error."""
    message = str(exc)
    import re
    named = re.search(r"unknown (?:name|function|method) \.?'?([A-Za-z_][A-Za-z0-9_]*)", message)
    if named and named.group(1) in text:
        return text.index(named.group(1))
    marker = ", column "
    if marker not in message or "at line 1" not in message:
        return 0
    try:
        return int(message.split(marker, 1)[1].split(":", 1)[0]) - 1
    except ValueError:
        return 0


def _suggest(word: str, choices: list[str]) -> str:
    import difflib
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
