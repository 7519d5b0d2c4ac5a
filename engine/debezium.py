"""Change events as Kafka messages: Debezium-compatible envelopes in JSON or in Avro (Confluent wire format).

JSON: Debezium's envelope fields (before, after, source, op, ts_ms,
transaction) plus tiersync's origin, path and ``tiersync_types`` (the kind of
every value JSON cannot carry itself, so decimals, times, UUIDs and bytes come
back exactly).

Avro (the kafka link's, transports/kafka_avro.py): messages are byte 0, the
4-byte schema id, then the Avro body; ids come from a :class:`SchemaRegistry`.
Here: the registry, the value union made from JSON envelope values
(:func:`branch_of_json`) and back (:func:`json_of_avro`), and the reader of
link messages written before typed fields (:func:`avro_to_json`).
"""

from __future__ import annotations

import base64
import json
from datetime import date, datetime, time, timezone
from decimal import Decimal
from functools import lru_cache
from typing import Any
from uuid import UUID

import orjson

from .avro import _branch, schema_id, wire_split
from .event import ChangeEvent, Op, TableId
from .jsontext import dumps_exact, json_bytes

# ------------------------------------------------------------------ reversible Avro names

@lru_cache(maxsize=65536)
def unescape_name(text: str) -> str:
    """A column name as link messages written before typed fields escaped it (``_`` → ``__``, other
    non-alphanumerics → ``_xHEX_``, a leading digit behind ``_n``)."""
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
            "schema": event.table.schema, "table": event.table.name, "txId": event.txid, "seq": event.seq,
            "origin_tier": event.origin_tier}


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
           "origin": event.origin, "path": list(event.path),
           "key": image("key", {str(i): v for i, v in enumerate(event.key)}), "tiersync_types": kinds}
    return envelope_text(doc, kinds)


def envelope_text(doc: dict, kinds: dict[str, dict[str, str]]) -> bytes:
    """The JSON text of an envelope whose non-JSON values are already in their JSON form (so its only floats are
    finite doubles), fast unless a JSON column's document (which may hold any float) is in it."""
    if any("json" in row_kinds.values() for row_kinds in kinds.values()):
        return dumps_exact(doc).encode()
    return json_bytes(doc)


ENVELOPE_DECODER = json.JSONDecoder(parse_float=Decimal)  # built once: json.loads(…, parse_float=…) builds one per call
# a run of 19 digits or more: only an integer can hold one (a double's text has at most 17), maybe beyond 64 bits;
# found as a run of zeros once every digit reads as 0 (translate and a substring search: far cheaper than a regex)
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 19


def parse_envelope(data: bytes) -> dict:
    """A JSON envelope (:func:`to_json`) parsed exactly. Outside a JSON column's document (kind ``json``) its
    floats are doubles written in their shortest form, so orjson reads them exactly too, and it is used unless
    the text holds a JSON document or an integer orjson would turn into a float (beyond 64 bits); those, and
    anything orjson refuses, take the standard library with decimals kept as :class:`Decimal`."""
    if b'"json"' not in data and _LONG_NUMBER not in data.translate(_DIGITS_AS_ZERO):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return ENVELOPE_DECODER.decode(data.decode())


def envelope_key(doc: dict, typed: bool = False) -> list:
    """The key values of a parsed JSON envelope: as the JSON holds them, or ``typed`` (as the event had them)."""
    key = doc["key"] or {}
    kinds = (doc.get("tiersync_types") or {}).get("key", {}) if typed else {}
    values = [key[str(i)] for i in range(len(key))]
    if kinds:
        values = [v if v is None or (k := kinds.get(str(i))) is None else _FROM_JSON[k](v)
                  for i, v in enumerate(values)]
    return values


def from_json(data: bytes) -> ChangeEvent:
    doc = parse_envelope(data)
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
        source_database=source["db"], snapshot=source["snapshot"] == "true",
        origin_tier=source.get("origin_tier") or "")


# ------------------------------------------------------------------ Avro: schemas by id, the link's earlier messages

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

    def schema(self, sid: int) -> dict:
        """The schema text (as a dict) of an id :meth:`parsed` found."""
        self.parsed(sid)
        return self._text[sid]


def _json_as_avro(value: Any, kind: str) -> tuple:
    if kind == "json":
        return ("tiersync.Json", {"text": dumps_exact(value)}) if isinstance(value, dict) else \
            ("tiersync.List", {"json": dumps_exact(value)})
    return _AVRO_OF_JSON_KIND[kind](value)


_AVRO_OF_JSON_KIND = {
    "double": lambda v: ("double", float(v)), "decimal": lambda v: ("tiersync.Decimal", {"text": v}),
    "uuid": lambda v: ("tiersync.Uuid", {"text": v}), "bytes": lambda v: ("bytes", base64.b64decode(v)),
    **{kind: (lambda k: lambda v: ("tiersync.Temporal", {"kind": k, "iso": v}))(kind)
       for kind in ("timestamptz", "timestamp", "date", "time")},
}


def branch_of_json(value: Any, kind: str | None) -> tuple:
    """A JSON envelope's value (its kind from ``tiersync_types``) as a named branch of the value union."""
    if kind is None or value is None:
        return _branch(value)
    return _json_as_avro(value, kind)


def avro_to_json(data: bytes, registry: SchemaRegistry) -> bytes:
    """The JSON envelope (:func:`to_json`) of the event in a kafka link message written before typed fields (every
    column a ``tiersync.Value`` record; transports/kafka_avro.py reads the typed ones and hands these here), made
    from the record's values without building the event (``ts_ms`` kept to the millisecond)."""
    import fastavro

    sid, body = wire_split(data)
    schema = registry.parsed(sid)
    record = fastavro.schemaless_reader(body, schema, None, return_record_name=True)
    kinds: dict[str, dict[str, str]] = {}

    def image(name: str, row, columns=unescape_name):
        if row is None:
            return None
        if isinstance(row, tuple):  # (record name, fields) with return_record_name
            row = row[1]
        out = {}
        for field, cell in row.items():
            if cell is None:
                continue  # a column the row did not have
            column = columns(field)
            value = (cell[1] if isinstance(cell, tuple) else cell)["v"]
            if isinstance(value, tuple) or type(value) in (float, bytes):
                kind, value = json_of_avro(value)
                kinds.setdefault(name, {})[column] = kind
            out[column] = value
        return out

    source = record["source"]
    seq, txid = source["seq"], source["txId"]
    doc = {"before": image("before", record["before"]), "after": image("after", record["after"]),
           "source": {"version": "tiersync", "connector": "tiersync", "name": source["name"],
                      "ts_ms": source["ts_ms"], "snapshot": "true" if source["snapshot"] == "true" else "false",
                      "db": source["db"], "schema": source["schema"], "table": source["table"], "txId": txid,
                      "seq": seq, "origin_tier": source.get("origin_tier") or ""},
           "op": record["op"], "ts_ms": source["ts_ms"],
           "transaction": None if txid is None else {"id": str(txid), "total_order": seq,
                                                     "data_collection_order": seq},
           "origin": record["origin"], "path": record["path"],
           "key": image("key", {str(i): v for i, v in enumerate(record["key"])}, str), "tiersync_types": kinds}
    return envelope_text(doc, kinds)


def json_of_avro(value: Any) -> tuple[str, Any]:
    """(kind, JSON value) of a value union datum JSON cannot carry itself (as :func:`to_json` writes it)."""
    if type(value) is float:
        return "double", value if value == value and abs(value) != float("inf") else repr(value)
    if type(value) is bytes:
        return "bytes", base64.b64encode(value).decode()
    name, body = value
    if name == "tiersync.Temporal":
        return body["kind"], body["iso"]
    if name == "tiersync.Decimal":
        return "decimal", body["text"]
    if name == "tiersync.Uuid":
        return "uuid", body["text"]
    if name == "tiersync.Json":
        return "json", json.loads(body["text"], parse_float=Decimal)
    return "json", json.loads(body["json"], parse_float=Decimal)
