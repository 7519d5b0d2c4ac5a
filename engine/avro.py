"""The Avro form of the change envelope (``schemas/avro/``), loaded and used with fastavro.

Values keep their logical kind (decimal, date, time, timestamp with or
without zone, uuid, json, bytes) so an event read back from Avro equals the
event written.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
from datetime import date, datetime, time, timezone
from decimal import Decimal
from functools import lru_cache
from importlib import resources
from typing import Any
from uuid import UUID

from .event import ChangeEvent, Op, TableId
from .jsontext import dumps_exact

SCHEMA_DIR = resources.files("schemas.avro")


@lru_cache(maxsize=1)
def envelope_schema():
    """The parsed envelope schema (parsed once: parsing is the expensive part)."""
    import fastavro

    def load(name: str) -> dict:
        return json.loads((SCHEMA_DIR / f"{name}.avsc").read_text(encoding="utf-8"))

    named: dict = {}
    for name in ("Value", "Source"):
        fastavro.parse_schema(load(name), named_schemas=named)
    return fastavro.parse_schema(load("ChangeEvent"), named_schemas=named)


_LONG_MIN, _LONG_MAX = -(2 ** 63), 2 ** 63 - 1


def _int_branch(value: int) -> tuple:
    if _LONG_MIN <= value <= _LONG_MAX:
        return ("long", value)
    return ("tiersync.Decimal", {"text": str(value)})  # beyond Avro's long: exact as text, never a lossy double


# Every branch is given by name (fastavro's tuple notation), so the writer need not test the value against each
# branch of the union in turn; the exact type picks the branch (bool before int: bool is an int).
_BRANCH_OF_TYPE = {
    type(None): lambda v: ("null", None), bool: lambda v: ("boolean", v), int: _int_branch,
    float: lambda v: ("double", v), str: lambda v: ("string", v), bytes: lambda v: ("bytes", v),
    Decimal: lambda v: ("tiersync.Decimal", {"text": str(v)}),
    datetime: lambda v: ("tiersync.Temporal", {"kind": "timestamptz" if v.tzinfo else "timestamp",
                                               "iso": v.isoformat()}),
    date: lambda v: ("tiersync.Temporal", {"kind": "date", "iso": v.isoformat()}),
    time: lambda v: ("tiersync.Temporal", {"kind": "time", "iso": v.isoformat()}),
    UUID: lambda v: ("tiersync.Uuid", {"text": str(v)}),
    dict: lambda v: ("tiersync.Json", {"text": dumps_exact(v)}),
    list: lambda v: ("tiersync.List", {"json": dumps_exact(v)}),
}


def _branch(value: Any) -> tuple:
    """``value`` as a named branch of the value union: ``(branch name, datum)``."""
    make = _BRANCH_OF_TYPE.get(type(value))
    if make is None:  # a subclass (e.g. a bool-like int, a str enum, a datetime subclass): the first kind it is
        for kind in (bool, int, float, str, bytes, Decimal, datetime, date, time, UUID, dict, list):
            if isinstance(value, kind):
                make = _BRANCH_OF_TYPE[kind]
                break
        else:
            raise TypeError(f"no Avro form for {type(value).__name__}")
    return make(value)


def _encode_value(value: Any) -> dict:
    return {"v": _branch(value)}


_TEMPORAL = {"date": date.fromisoformat, "time": time.fromisoformat,
             "timestamp": datetime.fromisoformat, "timestamptz": datetime.fromisoformat}


def _decode_value(cell: dict) -> Any:
    value = cell["v"]
    if not isinstance(value, tuple):  # a primitive branch of the union
        return value
    name, body = value
    if name == "tiersync.Temporal":
        return _TEMPORAL[body["kind"]](body["iso"])
    if name == "tiersync.Decimal":
        return Decimal(body["text"])
    if name == "tiersync.Uuid":
        return UUID(body["text"])
    if name == "tiersync.Json":
        return json.loads(body["text"], parse_float=Decimal)
    return json.loads(body["json"], parse_float=Decimal)


def _image(row: dict | None) -> dict | None:
    return None if row is None else {k: _encode_value(v) for k, v in row.items()}


def _unimage(row: dict | None) -> dict | None:
    return None if row is None else {k: _decode_value(v) for k, v in row.items()}


def to_record(event: ChangeEvent, version: str = "0.1") -> dict:
    ts = int((event.captured_at or datetime.now(timezone.utc)).timestamp() * 1000)
    return {
        "before": _image(event.before),
        "after": _image(event.after),
        "source": {"version": version, "connector": "tiersync", "name": event.source_node, "ts_ms": ts,
                   "snapshot": "true" if event.snapshot else "false", "db": event.source_database,
                   "schema": event.table.schema, "table": event.table.name, "txId": event.txid,
                   "sequence": None, "seq": event.seq, "origin_tier": event.origin_tier},
        "key": [_encode_value(v) for v in event.key],
        "op": event.op.value,
        "ts_ms": ts,
        "transaction": None if event.txid is None else {"id": str(event.txid), "total_order": event.seq,
                                                         "data_collection_order": event.seq},
        "origin": event.origin,
        "path": list(event.path),
    }


def from_record(record: dict) -> ChangeEvent:
    source = record["source"]
    return ChangeEvent(
        op=Op(record["op"]), table=TableId(source["schema"], source["table"]),
        key=tuple(_decode_value(v) for v in record["key"]),
        before=_unimage(record["before"]), after=_unimage(record["after"]), seq=source["seq"],
        txid=source["txId"], origin=record["origin"], path=tuple(record["path"]),
        captured_at=datetime.fromtimestamp(source["ts_ms"] / 1000, timezone.utc),
        source_node=source["name"], source_database=source["db"], snapshot=source["snapshot"] == "true",
        origin_tier=source.get("origin_tier") or "")


def encode(event: ChangeEvent) -> bytes:
    import fastavro

    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, envelope_schema(), to_record(event))
    return buffer.getvalue()


def decode(data: bytes) -> ChangeEvent:
    import fastavro

    record = fastavro.schemaless_reader(io.BytesIO(data), envelope_schema(), envelope_schema(),
                                        return_record_name=True)
    return from_record(record)


def value_union() -> list:
    """The union of value kinds (``tiersync.Value``'s one field), for per-table schemas whose fields take any kind."""
    return json.loads((SCHEMA_DIR / "Value.avsc").read_text(encoding="utf-8"))["fields"][0]["type"]


def to_union(value: Any) -> Any:
    """``value`` as a datum of :func:`value_union` (every branch named, as ``(name, datum)``)."""
    return _branch(value)


def from_union(datum: Any) -> Any:
    """The Python value of a :func:`value_union` datum read with ``return_record_name=True``."""
    return _decode_value({"v": datum})


# ------------------------------------------------------------------ registry ids and the Confluent wire format

def canonical(schema: dict) -> str:
    """A schema's canonical text (sorted keys, no spaces): what its registry id is computed from."""
    return json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def schema_id(schema: dict) -> int:
    """A registry id for a schema: 31 bits of the SHA-256 of its canonical text (the same id on every producer)."""
    return int.from_bytes(hashlib.sha256(canonical(schema).encode()).digest()[:4], "big") & 0x7FFFFFFF


def wire_encode(sid: int, parsed, record: dict) -> bytes:
    """A message in the Confluent wire format: byte 0, the 4-byte big-endian schema id, then the Avro body."""
    import fastavro

    buffer = io.BytesIO()
    buffer.write(struct.pack(">bI", 0, sid))
    fastavro.schemaless_writer(buffer, parsed, record)
    return buffer.getvalue()


def wire_split(data: bytes) -> tuple[int, io.BytesIO]:
    """The schema id and the Avro body of a Confluent wire-format message; ValueError says why it is not one."""
    if len(data) < 5 or data[0] != 0:
        first = f"0x{data[0]:02x}" if data else "nothing"
        raise ValueError(f"bad magic byte {first}: not the Confluent wire format (byte 0, 4-byte schema id)")
    return struct.unpack(">I", data[1:5])[0], io.BytesIO(data[5:])
