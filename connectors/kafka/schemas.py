"""Per-table Avro schemas, reversible Avro names, and the schema registry (embedded topic or Confluent URL).

A table's schema is a Debezium-style ``Envelope`` record (``before``/``after``
of a per-table ``Value`` record, ``source``, ``op``, ``ts_ms``) plus
tiersync's ``origin``, ``path`` and ``absent`` (columns left out of an image,
e.g. unchanged TOAST values). Each column is a field that takes any value kind
(tiersync's ``Value`` union), so decimals, times, UUIDs and JSON round-trip
exactly; the column's database type and the table's key are kept as schema
attributes, so a consumer can describe the table from the registry alone.
Adding a column gives a new schema with a new id; old messages keep decoding
with the schema their id names (every new field is nullable with a default).

Schema ids are the first 31 bits of the SHA-256 of the schema's canonical
text: every producer computes the same id without coordination.
"""

from __future__ import annotations

import json
import re
import threading
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from uuid import UUID

from engine.avro import canonical, from_union, schema_id, to_union, value_union
from engine.errors import TerminalError, TransientError
from engine.event import TableId
from engine.jsontext import dumps_exact
from engine.schema import ColumnInfo, TableInfo

_VALID = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ESCAPED = "ts_"  # prefix of escaped names; a valid name that starts with it is escaped too, so decoding is exact


def avro_name(name: str) -> str:
    """A valid Avro name for ``name``; :func:`column_name` turns it back.

    Valid names stay as they are. Others become ``ts_`` + the name with ``_``
    doubled and every other character outside ``[A-Za-z0-9]`` written as
    ``_<hex code point>_`` (``企业名称`` → ``ts__4f01__4e1a__540d__79f0_``).
    """
    if _VALID.match(name) and not name.startswith(ESCAPED):
        return name
    out = []
    for ch in name:
        if ch.isascii() and ch.isalnum():
            out.append(ch)
        elif ch == "_":
            out.append("__")
        else:
            out.append(f"_{ord(ch):x}_")
    return ESCAPED + "".join(out)


def column_name(name: str) -> str:
    """The column name :func:`avro_name` escaped."""
    if not name.startswith(ESCAPED):
        return name
    body, out, i = name[len(ESCAPED):], [], 0
    while i < len(body):
        ch = body[i]
        if ch != "_":
            out.append(ch)
            i += 1
        elif body[i + 1] == "_":
            out.append("_")
            i += 2
        else:
            end = body.index("_", i + 1)
            out.append(chr(int(body[i + 1:end], 16)))
            i = end + 1
    return "".join(out)


def _named(name: str) -> str:
    """An Avro namespace part for a topic or table name."""
    return avro_name(name).replace(".", "_")


# column kind → the Avro type of its field (besides null), named as Debezium names them (time.precision.mode
# adaptive_time_microseconds, decimal.handling.mode string); "any" takes every kind (tiersync's Value union)
AVRO_TYPES = {
    "boolean": "boolean", "long": "long", "double": "double", "string": "string", "bytes": "bytes",
    "decimal": {"type": "string", "connect.name": "tiersync.Decimal"},
    "date": {"type": "int", "connect.name": "io.debezium.time.Date"},
    "time": {"type": "long", "connect.name": "io.debezium.time.MicroTime"},
    "timestamp": {"type": "long", "connect.name": "io.debezium.time.MicroTimestamp"},
    "timestamptz": {"type": "string", "connect.name": "io.debezium.time.ZonedTimestamp"},
    "uuid": {"type": "string", "connect.name": "io.debezium.data.Uuid"},
    "json": {"type": "string", "connect.name": "io.debezium.data.Json"},
}


def column_kind(db_type: str) -> str:
    """The field kind for a column of database type ``db_type`` (PostgreSQL, MariaDB or SQLite names)."""
    t = db_type.lower().strip()
    if not t or "[]" in t or t.startswith("_") or any(w in t for w in ("interval", "point", "range")):
        return "any"
    if t.startswith("bool"):
        return "boolean"
    if t.startswith(("text", "character", "varchar", "char", "nvarchar", "nchar", "clob", "tinytext",
                     "mediumtext", "longtext")):
        return "string"
    if "int" in t or "serial" in t:
        return "long"
    if t.startswith(("numeric", "decimal")):
        return "decimal"
    if t.startswith(("double", "real", "float")):
        return "double"
    if t.startswith("timestamp") and "with time zone" in t and "without" not in t or t == "timestamptz":
        return "timestamptz"
    if t.startswith(("timestamp", "datetime")):
        return "timestamp"
    if t == "date":
        return "date"
    if t.startswith("time") and "with time zone" not in t and t != "timetz":
        return "time"
    if t.startswith(("bytea", "blob", "binary", "varbinary", "longblob", "mediumblob", "tinyblob")):
        return "bytes"
    if t in ("uuid", "json", "jsonb"):
        return "json" if t.startswith("json") else "uuid"
    return "any"


SOURCE_FIELDS = [
    {"name": "version", "type": "string"},
    {"name": "connector", "type": "string"},
    {"name": "name", "type": "string"},
    {"name": "ts_ms", "type": "long"},
    {"name": "snapshot", "type": "string", "default": "false"},
    {"name": "db", "type": "string"},
    {"name": "schema", "type": ["null", "string"], "default": None},
    {"name": "table", "type": "string"},
    {"name": "txId", "type": ["null", "long"], "default": None},
    {"name": "seq", "type": "long"},
    {"name": "origin_tier", "type": "string", "default": ""},
]


def table_schema(topic: str, table: TableInfo, kinds: dict[str, str] | None = None) -> dict:
    """The Envelope schema of ``table``'s topic; ``kinds`` overrides the kind a column's type gives."""
    union = value_union()
    named_defined = False
    fields = []
    for column in table.columns:
        kind = (kinds or {}).get(column.name) or column_kind(column.type)
        if kind != "any":
            avro_type = ["null", AVRO_TYPES[kind]]
        elif named_defined:  # named records are defined once, then referred to by name
            avro_type = [k if isinstance(k, str) else f"tiersync.{k['name']}" for k in union]
        else:
            avro_type = [k if isinstance(k, str) else dict(k, namespace="tiersync") for k in union]
            named_defined = True
        fields.append({"name": avro_name(column.name), "type": avro_type, "default": None,
                       "tiersync.column": column.name, "tiersync.type": column.type, "tiersync.kind": kind})
    namespace = _named(topic)
    value = {"type": "record", "name": "Value", "namespace": namespace, "fields": fields,
             "tiersync.table": str(table.id), "tiersync.key": list(table.primary_key)}
    return {
        "type": "record", "name": "Envelope", "namespace": namespace,
        "fields": [
            {"name": "before", "type": ["null", value], "default": None},
            {"name": "after", "type": ["null", "Value"], "default": None},
            {"name": "source", "type": {"type": "record", "name": "Source", "namespace": "tiersync.kafka",
                                        "fields": SOURCE_FIELDS}},
            {"name": "op", "type": "string"},
            {"name": "ts_ms", "type": ["null", "long"], "default": None},
            {"name": "origin", "type": "string", "default": ""},
            {"name": "path", "type": {"type": "array", "items": "string"}, "default": []},
            {"name": "absent", "type": {"type": "array", "items": "string"}, "default": [],
             "doc": "columns left out of the images (e.g. unchanged TOAST values): the target keeps its value"},
        ],
    }


def value_record(schema: dict) -> dict:
    return schema["fields"][0]["type"][1]


def table_of(schema: dict) -> TableInfo:
    """The table a schema describes (column names, database types, key)."""
    value = value_record(schema)
    columns = tuple(ColumnInfo(f["tiersync.column"], f.get("tiersync.type", "")) for f in value["fields"])
    return TableInfo(TableId.parse(value["tiersync.table"]), columns, tuple(value["tiersync.key"]))


def kinds_of(schema: dict) -> dict[str, str]:
    return {f["tiersync.column"]: f.get("tiersync.kind", "any") for f in value_record(schema)["fields"]}


def evolved(schema: dict, topic: str, new_columns=(), generic=()) -> dict:
    """``schema`` grown by new nullable columns, and with ``generic`` columns (values that did not fit their
    kind) taking any kind; old messages still decode, each with the schema its id names."""
    table = table_of(schema)
    kinds = kinds_of(schema) | {c: "any" for c in list(new_columns) + list(generic)}
    columns = table.columns + tuple(ColumnInfo(n, "") for n in new_columns)
    return table_schema(topic, TableInfo(table.id, columns, table.primary_key), kinds)


_EPOCH = datetime(1970, 1, 1)
_EPOCH_DAY = date(1970, 1, 1).toordinal()
_US = timedelta(microseconds=1)


def _kind_error(value, kind: str) -> TypeError:
    return TypeError(f"{type(value).__name__} value in a {kind} column")


def _decimal_text(value) -> str:
    if not isinstance(value, Decimal):
        raise _kind_error(value, "decimal")
    return str(value)


def _json_value(text: str):
    return json.loads(text, parse_float=Decimal)


def _date_days(value) -> int:
    if type(value) is not date:
        raise _kind_error(value, "date")
    return value.toordinal() - _EPOCH_DAY


def _days_date(days: int) -> date:
    return date.fromordinal(days + _EPOCH_DAY)


def _time_micros(value) -> int:
    if type(value) is not time or value.tzinfo is not None:
        raise _kind_error(value, "time")
    return ((value.hour * 60 + value.minute) * 60 + value.second) * 1_000_000 + value.microsecond


def _micros_time(micros: int) -> time:
    seconds, micro = divmod(micros, 1_000_000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    return time(hour, minute, second, micro)


def _timestamp_micros(value) -> int:
    if type(value) is not datetime or value.tzinfo is not None:
        raise _kind_error(value, "timestamp")
    return (value - _EPOCH) // _US


def _micros_timestamp(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def _zoned_text(value) -> str:
    if type(value) is not datetime or value.tzinfo is None:
        raise _kind_error(value, "timestamptz")
    return value.isoformat()


def _uuid_text(value) -> str:
    if not isinstance(value, UUID):
        raise _kind_error(value, "uuid")
    return str(value)


# per kind: (value → field datum, field datum → value); kinds not listed are written and read as they are
_CONVERT = {
    "decimal": (_decimal_text, Decimal), "json": (dumps_exact, _json_value), "any": (to_union, from_union),
    "date": (_date_days, _days_date), "time": (_time_micros, _micros_time),
    "timestamp": (_timestamp_micros, _micros_timestamp), "timestamptz": (_zoned_text, datetime.fromisoformat),
    "uuid": (_uuid_text, UUID),
}

# what a value of each kind is in Python, to find the columns whose values do not fit
FITS = {
    "boolean": lambda v: isinstance(v, bool), "long": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "double": lambda v: isinstance(v, (float, int)) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "bytes": lambda v: isinstance(v, bytes), "decimal": lambda v: isinstance(v, Decimal),
    "date": lambda v: isinstance(v, date) and not isinstance(v, datetime),
    "time": lambda v: isinstance(v, time) and v.tzinfo is None,
    "timestamp": lambda v: isinstance(v, datetime) and v.tzinfo is None,
    "timestamptz": lambda v: isinstance(v, datetime) and v.tzinfo is not None,
    "uuid": lambda v: isinstance(v, UUID), "json": lambda v: True, "any": lambda v: True,
}


# the Avro type a kind is written as: the name of its branch in the field's ["null", type] union
_BRANCH = {"boolean": "boolean", "long": "long", "double": "double", "string": "string", "bytes": "bytes",
           "decimal": "string", "date": "int", "time": "long", "timestamp": "long", "timestamptz": "string",
           "uuid": "string", "json": "string"}
_PYTHON_TYPE = {"boolean": bool, "long": int, "double": float, "string": str, "bytes": bytes}


def field_encoder(kind: str):
    """value (not None) → the field's datum with its union branch named (fastavro's tuple notation, so the
    writer does not test the union's branches in turn); TypeError when the value is not of the kind."""
    if kind == "any":
        return to_union  # names its branch itself
    branch = _BRANCH[kind]
    convert = _CONVERT.get(kind, (None,))[0]
    if convert is not None:
        return lambda value: (branch, convert(value))
    exact, fits = _PYTHON_TYPE[kind], FITS[kind]
    if kind == "double":  # an integer in a double column is written as a double, as fastavro's union resolution did
        return lambda value: (branch, value if type(value) is float else float(_checked(value, fits, kind)))
    return lambda value: (branch, value if type(value) is exact else _checked(value, fits, kind))


def _checked(value, fits, kind: str):
    if fits(value):
        return value
    raise _kind_error(value, kind)


class ParsedSchema:
    """A registered schema, parsed once, with its field ↔ column names and value conversions."""

    def __init__(self, schema_id_: int, subject: str, schema: dict):
        import fastavro

        self.id = schema_id_
        self.subject = subject
        self.schema = schema
        self.parsed = fastavro.parse_schema(schema)
        self.table = table_of(schema)
        fields = value_record(schema)["fields"]
        self.fields = [(f["tiersync.column"], f["name"]) for f in fields]
        self.columns = {c for c, _ in self.fields}
        self.to_column = {a: c for c, a in self.fields}
        self.avro_names = dict(self.fields)
        self.kinds = kinds_of(schema)
        self.encoders = {c: field_encoder(k) for c, k in self.kinds.items()}  # value → field datum, named branch
        self.decoders = {a: _CONVERT[self.kinds[c]][1] for c, a in self.fields if self.kinds[c] in _CONVERT}
        self.value_name = f"{schema['namespace']}.Value"  # written in tuple notation: no union resolution
        self.named_unions = "any" in self.kinds.values()  # only then are record names needed when reading

    def misfits(self, *images) -> list[str]:
        """Columns of ``images`` whose values are not of their field's kind."""
        return [c for image in images if image for c, v in image.items()
                if v is not None and c in self.kinds and not FITS[self.kinds[c]](v)]


class SchemaRegistry:
    """Subjects (``<topic>-value``) → versions → schemas, with ids; shared by producers and consumers.

    The embedded form keeps every registration as a message in the
    ``<prefix>._schemas`` topic (compacted; key = the id); ``registry=<url>``
    uses a Confluent-compatible schema registry instead.
    """

    def __init__(self, url):
        self.url = url
        self._by_id: dict[int, ParsedSchema] = {}
        self._latest: dict[str, ParsedSchema] = {}
        self._lock = threading.Lock()
        self._offset = 0
        self._producer = None

    # ------------------------------------------------------------ lookups

    def by_id(self, id_: int) -> ParsedSchema | None:
        found = self._by_id.get(id_)
        if found is None:
            if self.url.registry:
                doc = self._confluent_get(f"/schemas/ids/{id_}")
                if doc is not None:
                    self._by_id[id_] = ParsedSchema(id_, "", json.loads(doc["schema"]))
            else:
                self.refresh()
            found = self._by_id.get(id_)
        return found

    def latest(self, subject: str, refresh: bool = True) -> ParsedSchema | None:
        if self.url.registry:
            doc = self._confluent_get(f"/subjects/{subject}/versions/latest")
            if doc is None:
                return None
            parsed = self._by_id.get(doc["id"]) or ParsedSchema(doc["id"], subject, json.loads(doc["schema"]))
            self._by_id[doc["id"]] = self._latest[subject] = parsed
            return parsed
        if refresh:
            self.refresh()
        return self._latest.get(subject)

    def register(self, subject: str, schema: dict) -> ParsedSchema:
        id_ = schema_id(schema)
        with self._lock:
            known = self._by_id.get(id_)
            if known is not None and self._latest.get(subject) is known:
                return known
        if self.url.registry:
            id_ = self._confluent_register(subject, schema)
        else:
            self._embedded_publish(subject, id_, schema)
        parsed = ParsedSchema(id_, subject, schema)
        with self._lock:
            self._by_id[id_] = parsed
            self._latest[subject] = parsed
        return parsed

    # ------------------------------------------------------------ embedded topic

    def _embedded_publish(self, subject: str, id_: int, schema: dict) -> None:
        from .connection import ensure_topics, producer

        if self._producer is None:
            ensure_topics(self.url, [self.url.schema_topic], compact=True)
            self._producer = producer(self.url, linger_ms=0)
        doc = {"subject": subject, "id": id_, "schema": canonical(schema)}
        self._producer.send(self.url.schema_topic, key=f"{subject}:{id_}".encode(),
                            value=json.dumps(doc, ensure_ascii=False).encode())
        self._producer.flush()

    def refresh(self) -> None:
        """Read registrations published since the last refresh."""
        if self.url.registry:
            return
        from kafka import TopicPartition

        from .connection import consumer, read_to_end

        tp = TopicPartition(self.url.schema_topic, 0)
        client = consumer(self.url, max_poll_records=1000)
        try:
            if not client.partitions_for_topic(self.url.schema_topic):
                return
            for record in read_to_end(client, [tp], {tp: self._offset}):
                self._offset = record.offset + 1
                doc = json.loads(record.value)
                if doc["id"] not in self._by_id:
                    self._by_id[doc["id"]] = ParsedSchema(doc["id"], doc["subject"], json.loads(doc["schema"]))
                self._latest[doc["subject"]] = self._by_id[doc["id"]]
        except Exception as exc:  # noqa: BLE001 - translated
            from .errors import translate

            raise translate(exc, "reading the schema registry topic") from None
        finally:
            client.close()

    # ------------------------------------------------------------ Confluent-compatible registry

    def _confluent(self, path: str, body: dict | None = None) -> dict | None:
        """One request to the registry's REST API; None for 404 (no such subject or id)."""
        import urllib.error
        import urllib.parse
        import urllib.request

        url = self.url.registry.rstrip("/") + urllib.parse.quote(path)
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data,
                                         headers={"Content-Type": "application/vnd.schemaregistry.v1+json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            detail = exc.read().decode(errors="replace")[:300]
            if exc.code in (409, 422):  # incompatible or invalid schema: needs a person
                raise TerminalError(f"schema registry {self.url.registry} refused {path}: {detail}") from None
            raise TransientError(f"schema registry {self.url.registry}: HTTP {exc.code} for {path}: {detail}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise TransientError(f"schema registry {self.url.registry}: {path}: {exc}") from None

    def _confluent_get(self, path: str) -> dict | None:
        return self._confluent(path)

    def _confluent_register(self, subject: str, schema: dict) -> int:
        doc = self._confluent(f"/subjects/{subject}/versions", {"schema": canonical(schema)})
        if doc is None or "id" not in doc:
            raise TerminalError(f"schema registry {self.url.registry} did not register {subject}")
        return int(doc["id"])

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()
            self._producer = None
