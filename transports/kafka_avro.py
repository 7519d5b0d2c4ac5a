"""The kafka link's Avro: per-topic typed schemas (the ``kafka://`` connector's, connectors/kafka/schemas.py),
made from the outbox's JSON envelopes and read back into them, without building events.

Each column gets a typed field (string, long, boolean, double, decimal text, Debezium's date/time kinds, uuid,
json, bytes) from the first value the sender sees for it, so fastavro writes and reads plain fields. Exactness
first: a column whose value does not fit its field (an integer beyond 64 bits, a text in a number column, a
time with a zone…) takes any kind from then on (tiersync's value union), and a column seen only as NULL so far
takes any kind until its first value. Such a change, and a new column, registers a new schema (fields nullable
with defaults): earlier messages keep decoding with the id they carry (Confluent wire format). Columns left out
of the after image (or of the before image when there is no after) are listed in ``absent``, those left out of
the before image of an update in ``before_absent``, so an absent column and a NULL stay apart. The key is an
array of the value union (its values in key order).

Messages written before typed fields (a ``Value`` record per column, no ``absent``) are still read
(:func:`engine.debezium.avro_to_json`).
"""

from __future__ import annotations

import base64
import json
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from connectors.kafka.schemas import ParsedSchema, table_schema
from engine.avro import value_union, wire_encode, wire_split
from engine.debezium import (
    SchemaRegistry,
    avro_to_json,
    branch_of_json,
    envelope_text,
    json_of_avro,
    parse_envelope,
    to_json,
)
from engine.event import ChangeEvent, TableId
from engine.jsontext import dumps_exact
from engine.schema import ColumnInfo, TableInfo

_LONG_MIN, _LONG_MAX = -(2 ** 63), 2 ** 63 - 1
_EPOCH = datetime(1970, 1, 1)
_EPOCH_DAY = date(1970, 1, 1).toordinal()
_US = timedelta(microseconds=1)


class _Misfit(Exception):
    """A value that its column's typed field cannot hold exactly."""


def value_kind(value: Any, envelope_kind: str | None) -> str:
    """The field kind for a JSON envelope's value (not None) whose ``tiersync_types`` entry is ``envelope_kind``."""
    if envelope_kind is not None:
        return envelope_kind  # double, decimal, uuid, bytes, json, date, time, timestamp, timestamptz
    kind = type(value)
    if kind is str:
        return "string"
    if kind is bool:
        return "boolean"
    if kind is int and _LONG_MIN <= value <= _LONG_MAX:
        return "long"
    return "any"


# ---------------------------------------------------------------- JSON envelope value → typed field datum

def _as_is(branch: str, python_type: type):
    def encode(value, envelope_kind):
        if envelope_kind is not None or type(value) is not python_type:
            raise _Misfit
        return branch, value
    return encode


def _long(value, envelope_kind):
    if envelope_kind is not None or type(value) is not int or not _LONG_MIN <= value <= _LONG_MAX:
        raise _Misfit
    return "long", value


def _text_of(kind: str, convert=None):
    """A kind the envelope writes as text: the datum is ``convert(text)`` (the text itself without one)."""
    def encode(value, envelope_kind):
        if envelope_kind != kind:
            raise _Misfit
        try:
            return _BRANCH_OF_KIND[kind], value if convert is None else convert(value)
        except (TypeError, ValueError, OverflowError):
            raise _Misfit from None
    return encode


def _days(text: str) -> int:
    return date.fromisoformat(text).toordinal() - _EPOCH_DAY


def _time_micros(text: str) -> int:
    value = time.fromisoformat(text)
    if value.tzinfo is not None:
        raise ValueError("a time with a zone")
    return ((value.hour * 60 + value.minute) * 60 + value.second) * 1_000_000 + value.microsecond


def _timestamp_micros(text: str) -> int:
    value = datetime.fromisoformat(text)
    if value.tzinfo is not None:
        raise ValueError("a timestamp with a zone")
    return (value - _EPOCH) // _US


def _json_text(document) -> str:
    if not isinstance(document, (dict, list)):
        raise ValueError("not a JSON document")
    return dumps_exact(document)


_BRANCH_OF_KIND = {"double": "double", "decimal": "string", "uuid": "string", "timestamptz": "string",
                   "json": "string", "bytes": "bytes", "date": "int", "time": "long", "timestamp": "long"}

_ENCODERS = {
    "string": _as_is("string", str), "boolean": _as_is("boolean", bool), "long": _long,
    "double": _text_of("double", float), "decimal": _text_of("decimal", str), "uuid": _text_of("uuid", str),
    "timestamptz": _text_of("timestamptz", str), "json": _text_of("json", _json_text),
    "bytes": _text_of("bytes", base64.b64decode), "date": _text_of("date", _days),
    "time": _text_of("time", _time_micros), "timestamp": _text_of("timestamp", _timestamp_micros),
    "any": branch_of_json,  # names its branch itself
}


# ---------------------------------------------------------------- typed field datum → JSON envelope value

def _double_json(value: float):
    return value if value == value and abs(value) != float("inf") else repr(value)


_DECODERS = {  # kind → datum → the JSON envelope's value (its tiersync_types entry is the kind)
    "double": _double_json, "decimal": str, "uuid": str, "timestamptz": str,
    "json": lambda text: json.loads(text, parse_float=Decimal),
    "bytes": lambda data: base64.b64encode(data).decode(),
    "date": lambda days: date.fromordinal(days + _EPOCH_DAY).isoformat(),
    "time": lambda micros: (datetime.min + timedelta(microseconds=micros)).time().isoformat(),
    "timestamp": lambda micros: (_EPOCH + timedelta(microseconds=micros)).isoformat(),
}


def link_schema(topic: str, table: str, columns: list[str], kinds: dict[str, str]) -> dict:
    """The envelope schema of a link topic: :func:`connectors.kafka.schemas.table_schema` of ``columns`` with
    their ``kinds``, plus the key (values in key order, any kind) and ``before_absent``."""
    info = TableInfo(TableId(None, table), tuple(ColumnInfo(c, "") for c in columns), ())
    schema = table_schema(topic, info, kinds)
    defined = "any" in kinds.values()  # the union's named records are defined by the first any-kind column
    items = [k if isinstance(k, str) else f"tiersync.{k['name']}" if defined else dict(k, namespace="tiersync")
             for k in value_union()]
    schema["fields"] += [
        {"name": "key", "type": {"type": "array", "items": items}, "default": []},
        {"name": "before_absent", "type": {"type": "array", "items": "string"}, "default": [],
         "doc": "columns left out of the before image of an update"}]
    return schema


class LinkSchema:
    """A registered link schema, parsed once, with each field's conversions to and from JSON envelope values."""

    def __init__(self, sid: int, schema: dict):
        parsed = ParsedSchema(sid, "", schema)
        self.id, self.parsed, self.value_name, self.kinds = sid, parsed.parsed, parsed.value_name, parsed.kinds
        self.columns = [c for c, _ in parsed.fields]
        self.writers = {c: (a, _ENCODERS[parsed.kinds[c]]) for c, a in parsed.fields}
        # avro name → (column, kind, datum → JSON value); no converter: the datum is the JSON value
        self.readers = {a: (c, parsed.kinds[c], _DECODERS.get(parsed.kinds[c])) for c, a in parsed.fields}


class LinkTopicWriter:
    """Encodes one topic's JSON envelopes as Avro messages, growing and re-typing its schema as values demand."""

    def __init__(self, topic: str, table: str, registry: SchemaRegistry):
        self.topic, self.table, self.registry = topic, table, registry
        self.kinds: dict[str, str] = {}  # column → field kind, in column order
        self.unseen: set[str] = set()  # any-kind columns only because no value was seen yet
        self.schema: LinkSchema | None = None
        self.sid: int | None = None

    def _retype(self, kinds: dict[str, str]) -> None:
        self.kinds.update(kinds)
        schema = link_schema(self.topic, self.table, list(self.kinds), self.kinds)
        self.sid = self.registry.register(schema)
        self.schema = LinkSchema(self.sid, schema)

    def _columns(self, images: list[tuple[dict, dict]]) -> None:
        """Register a schema with the columns ``images`` (row, its tiersync_types) bring first, or whose first
        value they bring."""
        kinds, unseen = self.kinds, self.unseen
        changes: dict[str, str] = {}
        for row, row_kinds in images:
            for column, value in row.items():
                if changes.get(column, "any") != "any" or column in kinds and column not in unseen:
                    continue  # typed already, or in this call
                if value is not None:
                    changes[column] = value_kind(value, row_kinds.get(column))
                    unseen.discard(column)
                elif column not in kinds and column not in changes:
                    changes[column] = "any"  # until its first value
                    unseen.add(column)
        changes = {c: k for c, k in changes.items() if kinds.get(c) != k}
        if changes or self.schema is None:
            self._retype(changes)

    def encode(self, event: ChangeEvent) -> bytes:
        """The message of ``event``: the same as :meth:`encode_json` of its JSON envelope."""
        return self.encode_json(parse_envelope(to_json(event)))

    def encode_json(self, doc: dict) -> bytes:
        """The Avro message of a JSON envelope (:func:`engine.debezium.to_json`, parsed with
        :func:`engine.debezium.parse_envelope`)."""
        kinds = doc.get("tiersync_types") or {}
        before, after = doc["before"], doc["after"]
        images = [(row, kinds.get(name) or {}) for name, row in (("before", before), ("after", after)) if row]
        if self.schema is None or any(c not in self.kinds or c in self.unseen for row, _ in images for c in row):
            self._columns(images)
        for _ in range(len(self.kinds) + 2):  # each retry makes at least one more column any-kind
            try:
                return self._encode(doc, kinds)
            except _Misfit:
                self._retype({c: "any" for c in self._misfits(images)})
        raise AssertionError("unreachable: any-kind fields take every value")

    def _misfits(self, images) -> list[str]:
        found = []
        for row, row_kinds in images:
            for column, value in row.items():
                if value is not None:
                    try:
                        self.schema.writers[column][1](value, row_kinds.get(column))
                    except _Misfit:
                        found.append(column)
        return found

    def _encode(self, doc: dict, kinds: dict) -> bytes:
        schema = self.schema
        writers, value_name, columns = schema.writers, schema.value_name, schema.columns

        def fields(row, row_kinds):
            out = {}
            for column, value in row.items():
                name, write = writers[column]
                out[name] = None if value is None else write(value, row_kinds.get(column))
            return value_name, out

        before, after = doc["before"], doc["after"]
        image = after if after is not None else before
        absent = [] if image is None or len(image) == len(columns) else [c for c in columns if c not in image]
        before_absent = [] if before is None or after is None or len(before) == len(columns) else \
            [c for c in columns if c not in before]
        key, key_kinds = doc["key"] or {}, kinds.get("key", {})
        record = {
            "before": None if before is None else fields(before, kinds.get("before", {})),
            "after": None if after is None else fields(after, kinds.get("after", {})),
            "source": doc["source"], "op": doc["op"], "ts_ms": None, "origin": doc["origin"], "path": doc["path"],
            "absent": absent, "before_absent": before_absent,
            "key": [branch_of_json(key[str(i)], key_kinds.get(str(i))) for i in range(len(key))]}
        return wire_encode(schema.id, schema.parsed, record)


class LinkReader:
    """Turns a link's Avro messages back into JSON envelopes; schemas by the id each message carries."""

    def __init__(self, registry: SchemaRegistry):
        self.registry = registry
        self._schemas: dict[int, LinkSchema | None] = {}  # None: a schema from before typed fields

    def _schema(self, sid: int) -> LinkSchema | None:
        if sid not in self._schemas:
            self.registry.parsed(sid)  # KeyError when no registry knows it
            schema = self.registry.schema(sid)
            typed = any(f["name"] == "absent" for f in schema["fields"])
            self._schemas[sid] = LinkSchema(sid, schema) if typed else None
        return self._schemas[sid]

    def to_json(self, data: bytes) -> bytes:
        """The JSON envelope (:func:`engine.debezium.to_json`) of the event in an Avro message (``ts_ms`` to the
        millisecond); ValueError, KeyError or TypeError say why a message cannot be read."""
        import fastavro

        sid, body = wire_split(data)
        schema = self._schema(sid)
        if schema is None:
            return avro_to_json(data, self.registry)
        try:
            record = fastavro.schemaless_reader(body, schema.parsed, None, return_record_name=True,
                                                return_record_name_override=True)
        except Exception as exc:  # noqa: BLE001 - fastavro raises many kinds on a corrupt body
            raise ValueError(f"Avro body does not match schema {sid}: {type(exc).__name__}: {exc}") from None
        readers = schema.readers
        kinds: dict[str, dict[str, str]] = {}

        def image(name: str, fields, absent) -> dict | None:
            if fields is None:
                return None
            out, row_kinds = {}, {}
            for field, datum in fields.items():
                column, kind, read = readers[field]
                if column in absent:
                    continue
                if datum is not None:
                    if read is not None:
                        row_kinds[column] = kind
                        datum = read(datum)
                    elif kind == "any" and (isinstance(datum, tuple) or type(datum) in (float, bytes)):
                        row_kinds[column], datum = json_of_avro(datum)
                out[column] = datum
            if row_kinds:
                kinds[name] = row_kinds
            return out

        before, after = record["before"], record["after"]
        absent = set(record["absent"])
        source = record["source"]
        seq, txid = source["seq"], source["txId"]
        before = image("before", before, set(record["before_absent"]) if after is not None else absent)
        after = image("after", after, absent)
        key = {}
        for i, datum in enumerate(record["key"]):
            if isinstance(datum, tuple) or type(datum) in (float, bytes):
                kinds.setdefault("key", {})[str(i)], datum = json_of_avro(datum)
            key[str(i)] = datum
        doc = {"before": before, "after": after, "source": source, "op": record["op"],
               "ts_ms": source["ts_ms"],
               "transaction": None if txid is None else {"id": str(txid), "total_order": seq,
                                                         "data_collection_order": seq},
               "origin": record["origin"], "path": record["path"], "key": key, "tiersync_types": kinds}
        return envelope_text(doc, kinds)
