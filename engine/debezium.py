"""Change events as Kafka messages: Debezium-compatible envelopes in JSON or in Avro (Confluent wire format).

JSON: Debezium's envelope fields (before, after, source, op, ts_ms,
transaction) plus tiersync's origin, path and ``tiersync_types`` (the kind of
every value JSON cannot carry itself, so decimals, times, UUIDs and bytes come
back exactly).

Avro: one schema per topic, generated from the rows it carries: a record of
the table's columns, each nullable (so adding a column is a compatible
change), every value a ``tiersync.Value`` (its logical kind kept). Column and
node names that are not valid Avro names (Chinese column names, ``-``) are
escaped reversibly. Messages are byte 0, the 4-byte schema id, then the Avro
body; ids come from a :class:`SchemaRegistry`.
"""

from __future__ import annotations

import base64
import json
import re
from datetime import date, datetime, time, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

from .avro import SCHEMA_DIR, _decode_value, _encode_value, schema_id, wire_encode, wire_split
from .event import ChangeEvent, Op, TableId
from .jsontext import dumps_exact

# ------------------------------------------------------------------ reversible Avro names

_PLAIN = re.compile(r"[A-Za-z0-9]")


def escape_name(name: str) -> str:
    """A valid Avro name for any text, reversibly: ``_`` → ``__``, other non-alphanumerics → ``_xHEX_``."""
    out = []
    for char in name:
        if _PLAIN.fullmatch(char):
            out.append(char)
        elif char == "_":
            out.append("__")
        else:
            out.append(f"_x{ord(char):x}_")
    text = "".join(out)
    return text if text and not text[0].isdigit() else "_n" + text


def unescape_name(text: str) -> str:
    if text.startswith("_n"):
        text = text[2:]
    out, i = [], 0
    while i < len(text):
        if text[i] != "_":
            out.append(text[i])
            i += 1
        elif text[i + 1] == "_":
            out.append("_")
            i += 2
        else:  # _xHEX_
            end = text.index("_", i + 2)
            out.append(chr(int(text[i + 2:end], 16)))
            i = end + 1
    return "".join(out)


# ------------------------------------------------------------------ JSON

def _kind(value: Any) -> str | None:
    if value is None or isinstance(value, (bool, int, str)):
        return None
    if isinstance(value, float):
        return "double"
    if isinstance(value, Decimal):
        return "decimal"
    if isinstance(value, datetime):
        return "timestamptz" if value.tzinfo else "timestamp"
    if isinstance(value, date):
        return "date"
    if isinstance(value, time):
        return "time"
    if isinstance(value, UUID):
        return "uuid"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "bytes"
    if isinstance(value, (dict, list)):
        return "json"
    raise TypeError(f"no JSON form for {type(value).__name__}")


def _json_value(value: Any, kind: str) -> Any:
    if kind == "double":
        return value if value == value and abs(value) != float("inf") else repr(value)
    if kind == "bytes":
        return base64.b64encode(bytes(value)).decode()
    if kind == "json":
        return value
    if kind in ("timestamptz", "timestamp", "date", "time"):
        return value.isoformat()
    return str(value)


_FROM_JSON = {
    "double": float, "decimal": Decimal, "uuid": UUID, "bytes": base64.b64decode,
    "timestamptz": datetime.fromisoformat, "timestamp": datetime.fromisoformat, "date": date.fromisoformat,
    "time": time.fromisoformat, "json": lambda v: v,
}


def source_block(event: ChangeEvent, ts: int, node: str = "") -> dict:
    """Debezium's ``source`` block of an envelope; ``node`` names the source when the event does not."""
    return {"version": "tiersync", "connector": "tiersync", "name": event.source_node or node, "ts_ms": ts,
            "snapshot": "true" if event.snapshot else "false", "db": event.source_database,
            "schema": event.table.schema, "table": event.table.name, "txId": event.txid, "seq": event.seq}


def timestamp_ms(event: ChangeEvent) -> int:
    """When the change was captured (now if unknown), in milliseconds since the epoch: the envelope's ``ts_ms``."""
    return int((event.captured_at or datetime.now(timezone.utc)).timestamp() * 1000)


def to_json(event: ChangeEvent) -> bytes:
    kinds: dict[str, dict[str, str]] = {}

    def image(name: str, row: dict | None) -> dict | None:
        if row is None:
            return None
        out = {}
        for column, value in row.items():
            kind = _kind(value)
            if kind:
                kinds.setdefault(name, {})[column] = kind
                value = _json_value(value, kind)
            out[column] = value
        return out

    ts = timestamp_ms(event)
    doc = {"before": image("before", event.before), "after": image("after", event.after),
           "source": source_block(event, ts), "op": event.op.value, "ts_ms": ts,
           "transaction": None if event.txid is None else {"id": str(event.txid), "total_order": event.seq,
                                                            "data_collection_order": event.seq},
           "origin": event.origin, "path": list(event.path), "key": image("key", dict(enumerate(event.key))),
           "tiersync_types": kinds}
    return dumps_exact(doc).encode()


ENVELOPE_DECODER = json.JSONDecoder(parse_float=Decimal)  # built once: json.loads(…, parse_float=…) builds one per call


def from_json(data: bytes) -> ChangeEvent:
    doc = ENVELOPE_DECODER.decode(data.decode())
    kinds = doc.get("tiersync_types") or {}

    def image(name: str) -> dict | None:
        row = doc.get(name)
        if row is None:
            return None
        for column, kind in kinds.get(name, {}).items():
            if row.get(column) is not None:
                row[column] = _FROM_JSON[kind](row[column])
        return row

    source = doc["source"]
    key = image("key") or {}
    return ChangeEvent(
        op=Op(doc["op"]), table=TableId(source.get("schema"), source["table"]),
        key=tuple(key[str(i)] for i in range(len(key))), before=image("before"), after=image("after"),
        seq=source["seq"], txid=source.get("txId"), origin=doc["origin"], path=tuple(doc["path"]),
        captured_at=datetime.fromtimestamp(source["ts_ms"] / 1000, timezone.utc), source_node=source["name"],
        source_database=source["db"], snapshot=source["snapshot"] == "true")


# ------------------------------------------------------------------ Avro, per topic

def _load(name: str) -> dict:
    return json.loads((SCHEMA_DIR / f"{name}.avsc").read_text(encoding="utf-8"))


def table_schema(topic: str, columns: list[str]) -> dict:
    """The envelope schema of one topic whose rows have ``columns`` (all nullable; new ones go last)."""
    namespace = ".".join(escape_name(part) for part in topic.split("."))
    fields = []
    for i, column in enumerate(columns):
        fields.append({"name": escape_name(column), "type": ["null", _load("Value") if i == 0 else "tiersync.Value"],
                       "default": None})
    value = {"type": "record", "name": "Value", "namespace": namespace, "fields": fields}
    return {"type": "record", "name": "Envelope", "namespace": namespace, "fields": [
        {"name": "before", "type": ["null", value], "default": None},
        {"name": "after", "type": ["null", f"{namespace}.Value"], "default": None},
        {"name": "source", "type": _load("Source")},
        {"name": "op", "type": {"type": "enum", "name": "Operation", "symbols": ["c", "u", "d", "r", "t"]}},
        {"name": "ts_ms", "type": ["null", "long"], "default": None},
        {"name": "transaction", "type": ["null", {"type": "record", "name": "Transaction", "fields": [
            {"name": "id", "type": "string"}, {"name": "total_order", "type": "long"},
            {"name": "data_collection_order", "type": "long"}]}], "default": None},
        {"name": "origin", "type": "string"},
        {"name": "path", "type": {"type": "array", "items": "string"}, "default": []},
        {"name": "key", "type": {"type": "array", "items": "tiersync.Value"}, "default": []},
    ]}


class SchemaRegistry:
    """Schemas by id; ``publish`` makes a new one known to readers (e.g. on a Kafka topic)."""

    def __init__(self, publish=None, fetch=None):
        self._parsed: dict[int, Any] = {}
        self._text: dict[int, dict] = {}
        self._publish, self._fetch = publish, fetch

    def register(self, schema: dict) -> int:
        sid = schema_id(schema)
        if sid not in self._text:
            if self._publish:
                self._publish(sid, schema)
            self.add(sid, schema)
        return sid

    def add(self, sid: int, schema: dict) -> None:
        import fastavro

        self._text[sid] = schema
        self._parsed[sid] = fastavro.parse_schema(schema)

    def parsed(self, sid: int):
        if sid not in self._parsed and self._fetch:
            for found, schema in self._fetch():
                if found not in self._parsed:
                    self.add(found, schema)
        if sid not in self._parsed:
            raise KeyError(f"unknown schema id {sid}")
        return self._parsed[sid]


class AvroTopicWriter:
    """Encodes one topic's events, extending its schema when a row brings a new column."""

    def __init__(self, topic: str, registry: SchemaRegistry):
        self.topic, self.registry = topic, registry
        self.columns: list[str] = []
        self.sid: int | None = None

    def encode(self, event: ChangeEvent) -> bytes:
        new = [c for row in (event.before, event.after) if row for c in row if c not in self.columns]
        if new or self.sid is None:
            self.columns += list(dict.fromkeys(new))
            self.sid = self.registry.register(table_schema(self.topic, self.columns))
            self._names = [(c, escape_name(c)) for c in self.columns]
            self._record = ".".join(escape_name(part) for part in self.topic.split(".")) + ".Value"
        names = self._names

        # unions are given as (branch name, value): fastavro then need not try each branch
        def image(row):
            if row is None:
                return None
            return (self._record, {e: (("tiersync.Value", _encode_value(row[c])) if c in row else None)
                                   for c, e in names})
        record = {
            "before": image(event.before), "after": image(event.after),
            "source": {**source_block(event, timestamp_ms(event)), "sequence": None},
            "op": event.op.value, "ts_ms": None, "transaction": None, "origin": event.origin,
            "path": list(event.path), "key": [_encode_value(v) for v in event.key]}
        return wire_encode(self.sid, self.registry.parsed(self.sid), record)


def from_avro(data: bytes, registry: SchemaRegistry) -> ChangeEvent:
    import fastavro

    sid, body = wire_split(data)
    schema = registry.parsed(sid)
    record = fastavro.schemaless_reader(body, schema, schema, return_record_name=True)

    def image(row):
        if row is None:
            return None
        if isinstance(row, tuple):  # (record name, fields) with return_record_name
            row = row[1]
        return {unescape_name(k): _decode_value(v[1] if isinstance(v, tuple) else v)
                for k, v in row.items() if v is not None}

    source = record["source"]
    return ChangeEvent(
        op=Op(record["op"]), table=TableId(source["schema"], source["table"]),
        key=tuple(_decode_value(v) for v in record["key"]), before=image(record["before"]),
        after=image(record["after"]), seq=source["seq"], txid=source["txId"], origin=record["origin"],
        path=tuple(record["path"]), captured_at=datetime.fromtimestamp(source["ts_ms"] / 1000, timezone.utc),
        source_node=source["name"], source_database=source["db"], snapshot=source["snapshot"] == "true")
