"""Message values: the Debezium-compatible change envelope as JSON, or as Avro in the Confluent wire format.

JSON: ``{"before", "after", "source", "op", "ts_ms", "origin", "path",
"types"}``; values that JSON has no kind for are written as Debezium writes
them with ``decimal.handling.mode=string`` (decimals, times and UUIDs as
strings, JSON columns as JSON text, bytes as base64) and ``types`` names the
kind of each such column, so the consumer gets back exactly the value the
source had. Avro: byte 0, the 4-byte big-endian schema id, then the record
(see :mod:`.schemas`).
"""

from __future__ import annotations

import base64
import json
import math
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

from engine.avro import wire_encode, wire_split
from engine.debezium import source_block, timestamp_ms
from engine.event import ChangeEvent, Op, TableId
from engine.jsontext import dumps_exact, json_bytes

from .schemas import ParsedSchema, SchemaRegistry


class BadMessage(ValueError):
    """A message that cannot be decoded; the reason is said in words."""


# ---------------------------------------------------------------------- JSON values

def _json_cell(value: Any, column: str, kinds: dict) -> Any:
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, Decimal):
        kinds[column] = "decimal"
        return str(value)
    if isinstance(value, datetime):
        kinds[column] = "timestamptz" if value.tzinfo else "timestamp"
        return value.isoformat()
    if isinstance(value, date):
        kinds[column] = "date"
        return value.isoformat()
    if isinstance(value, time):
        kinds[column] = "time"
        return value.isoformat()
    if isinstance(value, UUID):
        kinds[column] = "uuid"
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        kinds[column] = "bytes"
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, (dict, list)):
        kinds[column] = "json"
        return dumps_exact(value)
    if isinstance(value, timedelta):
        kinds[column] = "interval"
        return [value.days, value.seconds, value.microseconds]
    raise TypeError(f"column {column}: no JSON form for {type(value).__name__}")


_FROM_JSON = {
    "decimal": Decimal, "timestamp": datetime.fromisoformat, "timestamptz": datetime.fromisoformat,
    "date": date.fromisoformat, "time": time.fromisoformat, "uuid": UUID, "bytes": base64.b64decode,
    "json": lambda text: json.loads(text, parse_float=Decimal), "interval": lambda parts: timedelta(*parts),
}


_NATIVE = frozenset({str, int, float, bool, type(None)})
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # made once: json.dumps makes one a call


def _json_image(row: dict | None, kinds: dict) -> dict | None:
    if row is None:
        return None
    native = _NATIVE
    return {c: v if type(v) in native else _json_cell(v, c, kinds) for c, v in row.items()}


def _finite(row: dict | None) -> bool:
    """No NaN or infinite float among the row's values."""
    return row is None or all(math.isfinite(v) for v in row.values() if type(v) is float)


def _json_unimage(image: dict | None, kinds: dict) -> dict | None:
    if image is None:
        return None
    if not isinstance(image, dict):
        raise BadMessage("a row image is not a JSON object")
    for column, kind in kinds.items():
        value = image.get(column)
        if value is not None:
            try:
                image[column] = _FROM_JSON[kind](value)
            except KeyError:
                raise BadMessage(f"unknown value kind {kind!r} for column {column!r}") from None
            except (ValueError, TypeError, ArithmeticError) as exc:
                raise BadMessage(f"column {column!r} is not a valid {kind}: {exc}") from None
    return image


# ---------------------------------------------------------------------- the envelope

class Codec:
    """Encodes and decodes envelopes in one format; Avro schemas come from (and go to) ``registry``."""

    def __init__(self, fmt: str, registry: SchemaRegistry):
        self.format = fmt
        self.registry = registry

    # ------------------------------------------------------------ encode

    def encode(self, op: str, before: dict | None, after: dict | None, event: ChangeEvent, node: str,
               path: list[str], schema: ParsedSchema | None) -> bytes:
        ts = timestamp_ms(event)
        if self.format == "avro":
            return self._encode_avro(op, before, after, event, node, path, ts, schema)
        kinds: dict[str, str] = {}
        doc = {"before": _json_image(before, kinds), "after": _json_image(after, kinds),
               "source": source_block(event, ts, node), "op": op, "ts_ms": ts, "origin": event.origin or node,
               "path": path}
        if kinds:
            doc["types"] = kinds
        if _finite(before) and _finite(after):
            return json_bytes(doc)  # JSON columns are text here, so the images' floats are the only ones
        return _ENCODER.encode(doc).encode()  # writes NaN and Infinity as Python's json does (orjson: null)

    def _encode_avro(self, op, before, after, event, node, path, ts, schema: ParsedSchema) -> bytes:
        names, encoders = schema.avro_names, schema.encoders
        image = after if after is not None else before

        def fields(row):
            if row is None:
                return None
            return (schema.value_name,
                    {names[c]: None if v is None else encoders[c](v) for c, v in row.items()})
        record = {
            "before": fields(before), "after": fields(after),
            "source": source_block(event, ts, node), "op": op, "ts_ms": ts, "origin": event.origin or node,
            "path": path,
            "absent": [] if image is None or len(image) >= len(names) else [c for c in names if c not in image],
        }
        return wire_encode(schema.id, schema.parsed, record)

    # ------------------------------------------------------------ decode

    def decode(self, data: bytes, table: TableId, key_columns: tuple[str, ...]) -> ChangeEvent:
        """The change event in a message value; :class:`BadMessage` says why one cannot be read."""
        if self.format == "avro":
            doc, before, after = self._decode_avro(data)
        else:
            try:
                doc = json.loads(data)
            except (ValueError, UnicodeDecodeError) as exc:
                raise BadMessage(f"not valid JSON: {exc}") from None
            if not isinstance(doc, dict) or "op" not in doc or "source" not in doc:
                raise BadMessage("not a change envelope: a JSON object with op, source, before and after is expected")
            kinds = doc.get("types") or {}
            before, after = _json_unimage(doc.get("before"), kinds), _json_unimage(doc.get("after"), kinds)
        try:
            op = Op(doc["op"])
            source = doc["source"]
            image = after if op is not Op.DELETE else before
            if image is None and op is not Op.TRUNCATE:
                raise BadMessage(f"op {op.value!r} without its row image")
            key = tuple(image.get(c) for c in key_columns) if image is not None else ()
            return ChangeEvent(
                op=op, table=table, key=key, before=before, after=after, seq=int(source.get("seq") or 0),
                txid=source.get("txId"), origin=doc.get("origin") or source.get("name", ""),
                path=tuple(doc.get("path") or ()),
                captured_at=datetime.fromtimestamp(source["ts_ms"] / 1000, timezone.utc),
                source_node=source.get("name", ""), source_database=source.get("db", ""),
                snapshot=source.get("snapshot") == "true", origin_tier=source.get("origin_tier") or "")
        except BadMessage:
            raise
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise BadMessage(f"not a change envelope: {type(exc).__name__}: {exc}") from None

    def _decode_avro(self, data: bytes):
        import fastavro

        try:
            id_, body = wire_split(data)
        except ValueError as exc:
            raise BadMessage(str(exc)) from None
        schema = self.registry.by_id(id_)
        if schema is None:
            raise BadMessage(f"unknown schema id {id_}: not in the schema registry")
        try:
            record = fastavro.schemaless_reader(body, schema.parsed, None,
                                                return_record_name=schema.named_unions,
                                                return_record_name_override=schema.named_unions)
        except Exception as exc:  # noqa: BLE001 - fastavro raises many kinds on a corrupt body
            raise BadMessage(f"Avro body does not match schema {id_}: {type(exc).__name__}: {exc}") from None
        absent = set(record.get("absent") or ())
        to_column, decoders = schema.to_column, schema.decoders

        def unimage(image):
            if image is None:
                return None
            row = {to_column[a]: v if v is None or (d := decoders.get(a)) is None else d(v) for a, v in image.items()}
            for column in absent:
                row.pop(column, None)
            return row
        return record, unimage(record["before"]), unimage(record["after"])
