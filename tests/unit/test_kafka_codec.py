"""The Kafka connector's pure parts: Avro names, column kinds, envelopes in both formats, positions, URLs."""

from __future__ import annotations

import math
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("kafka")

from connectors.kafka.codec import BadMessage, Codec  # noqa: E402
from connectors.kafka.connection import KafkaUrl, topic_part  # noqa: E402
from connectors.kafka.position import KafkaPosition  # noqa: E402
from connectors.kafka.schemas import (  # noqa: E402
    ParsedSchema,
    avro_name,
    column_kind,
    column_name,
    evolved,
    schema_id,
    table_of,
    table_schema,
)
from engine.errors import ConfigError  # noqa: E402
from engine.event import ChangeEvent, Op, TableId  # noqa: E402
from engine.schema import ColumnInfo, TableInfo  # noqa: E402

TABLE = TableInfo(TableId("public", "企业"), (
    ColumnInfo("id", "bigint"), ColumnInfo("企业名称", "text"), ColumnInfo("capital", "numeric(18,4)"),
    ColumnInfo("founded", "date"), ColumnInfo("updated_at", "timestamp with time zone"),
    ColumnInfo("seen", "timestamp without time zone"), ColumnInfo("opens", "time without time zone"),
    ColumnInfo("profile", "jsonb"), ColumnInfo("logo", "bytea"), ColumnInfo("uid", "uuid"),
    ColumnInfo("score", "double precision"), ColumnInfo("active", "boolean"), ColumnInfo("anything", ""),
), ("id",))

ROW = {"id": 12345678901234, "企业名称": "北京某某 'quoted'", "capital": Decimal("12345678901234.5670"),
       "founded": date(1, 1, 1), "updated_at": datetime(2026, 11, 21, 8, 0, 0, 123456,
                                                          tzinfo=timezone(timedelta(hours=8))),
       "seen": datetime(1969, 12, 31, 23, 59, 59, 999999), "opens": time(23, 59, 59, 999999),
       "profile": {"a": Decimal("1.10"), "b": [1, "二"]}, "logo": b"\x00\xff", "uid": UUID(int=7),
       "score": 0.1, "active": False, "anything": Decimal("-0.000")}


class Registry:
    def __init__(self, *schemas: ParsedSchema):
        self.schemas = {s.id: s for s in schemas}

    def by_id(self, id_):
        return self.schemas.get(id_)


def _parsed(table=TABLE, topic="p.node.public.t"):
    schema = table_schema(topic, table)
    return ParsedSchema(schema_id(schema), f"{topic}-value", schema)


def _event(op=Op.UPDATE, before=None, after=ROW):
    return ChangeEvent(op, TABLE.id, (ROW["id"],), before, after, seq=42, txid=7, origin="county-1",
                       path=("county-1",), captured_at=datetime(2026, 1, 1, tzinfo=timezone.utc),
                       source_node="county-1", source_database="county", origin_tier="county")


@given(st.text(min_size=1, max_size=30))
def test_avro_names_are_valid_and_reversible(name):
    escaped = avro_name(name)
    assert escaped[0].isascii() and (escaped[0].isalpha() or escaped[0] == "_")
    assert all(c.isascii() and (c.isalnum() or c == "_") for c in escaped)
    assert column_name(escaped) == name


def test_valid_names_stay_as_they_are_and_chinese_names_are_escaped():
    assert avro_name("qy_id") == "qy_id"
    assert avro_name("企业名称") == "ts__4f01__4e1a__540d__79f0_"
    assert avro_name("ts_x") != "ts_x"  # the escape prefix itself is escaped, so decoding is unambiguous


def test_topic_parts_keep_to_kafka_characters():
    assert topic_part("county-110101") == "county-110101"
    assert set(topic_part("企业.表")) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


@pytest.mark.parametrize("db_type,kind", [
    ("integer", "long"), ("tinytext", "string"), ("interval", "any"), ("numeric(12,2)", "decimal"),
    ("timestamp with time zone", "timestamptz"), ("datetime", "timestamp"), ("time with time zone", "any"),
    ("jsonb", "json"), ("uuid", "uuid"), ("integer[]", "any"), ("", "any"), ("REAL", "double")])
def test_column_kinds(db_type, kind):
    assert column_kind(db_type) == kind


@pytest.mark.parametrize("fmt", ["json", "avro"])
def test_envelope_round_trip_is_exact(fmt):
    schema = _parsed()
    codec = Codec(fmt, Registry(schema))
    before = dict(ROW, capital=None, 企业名称="旧")
    data = codec.encode("u", before, ROW, _event(before=before), "county-1", ["county-1", "city-2"], schema)
    event = codec.decode(data, TABLE.id, ("id",))
    assert event.after == ROW and event.before == before
    for column, value in ROW.items():  # equal and of the same kind, not merely ==
        assert type(event.after[column]) is type(value), column
    assert str(event.after["capital"]) == "12345678901234.5670"
    assert event.after["updated_at"].utcoffset() == timedelta(hours=8)
    assert (event.op, event.key, event.origin, event.path, event.seq, event.txid, event.origin_tier) == \
        (Op.UPDATE, (ROW["id"],), "county-1", ("county-1", "city-2"), 42, 7, "county")
    if fmt == "avro":
        assert data[0] == 0 and int.from_bytes(data[1:5], "big") == schema.id


def test_avro_keeps_absent_columns_absent():
    schema = _parsed()
    codec = Codec("avro", Registry(schema))
    partial = {"id": 1, "企业名称": "x"}  # e.g. unchanged TOAST columns left out of a logical-decoding image
    event = codec.decode(codec.encode("u", None, partial, _event(after=partial), "n", ["n"], schema), TABLE.id,
                         ("id",))
    assert event.after == partial


def test_a_grown_schema_gets_a_new_id_and_old_messages_still_decode():
    old = _parsed()
    grown_schema = evolved(old.schema, "p.node.public.t", new_columns=["联系电话"])
    grown = ParsedSchema(schema_id(grown_schema), old.subject, grown_schema)
    assert grown.id != old.id and table_of(grown_schema).column_names[-1] == "联系电话"
    codec = Codec("avro", Registry(old, grown))
    old_message = codec.encode("c", None, ROW, _event(op=Op.CREATE), "n", ["n"], old)
    new_row = dict(ROW, 联系电话="010")
    new_message = codec.encode("c", None, new_row, _event(op=Op.CREATE, after=new_row), "n", ["n"], grown)
    assert codec.decode(old_message, TABLE.id, ("id",)).after == ROW
    assert codec.decode(new_message, TABLE.id, ("id",)).after == new_row


def test_a_value_that_does_not_fit_its_column_kind_is_named():
    schema = _parsed()
    assert schema.misfits({"id": "not a number", "score": 1.5, "founded": datetime(2020, 1, 1)}) == ["id", "founded"]
    with pytest.raises((TypeError, ValueError)):
        Codec("avro", Registry(schema)).encode("c", None, {"id": "x"}, _event(), "n", [], schema)


@pytest.mark.parametrize("fmt,data,reason", [
    ("avro", b"\x07abc", "bad magic byte 0x07"),
    ("avro", b"", "bad magic byte nothing"),
    ("avro", b"\x00\x00\x00\x00\x09\x02", "unknown schema id 9"),
    ("json", b"{oops", "not valid JSON"),
    ("json", b"[1, 2]", "not a change envelope"),
    ("json", b'{"op": "x", "source": {}}', "not a change envelope"),
    ("json", b'{"op": "c", "source": {"ts_ms": 0}, "after": {"id": "x"}, "types": {"id": "date"}}',
     "not a valid date"),
])
def test_undecodable_messages_say_why(fmt, data, reason):
    with pytest.raises(BadMessage, match=reason):
        Codec(fmt, Registry()).decode(data, TABLE.id, ("id",))


def test_avro_body_that_does_not_match_its_schema():
    schema = _parsed()
    with pytest.raises(BadMessage, match="does not match schema"):
        Codec("avro", Registry(schema)).decode(b"\x00" + schema.id.to_bytes(4, "big") + b"\xff", TABLE.id, ("id",))


def test_positions_round_trip_and_refuse_garbage():
    position = KafkaPosition({"p.n.public.t:0": 17, "p.n.public.t:1": 0}, {"n/up": 3})
    assert KafkaPosition.deserialise(position.serialise()) == position
    with pytest.raises(ValueError, match="not a Kafka position"):
        KafkaPosition.deserialise("kafka:nonsense")
    with pytest.raises(ValueError, match="not a kafka position"):
        KafkaPosition.deserialise("pglsn:0/0:0")


def test_urls():
    url = KafkaUrl.parse("kafka://a:9092,b:9093/ex?format=avro&node=county-1&partitions=3&compact=true")
    assert (url.bootstrap, url.prefix, url.format, url.node, url.partitions, url.compact) == \
        (("a:9092", "b:9093"), "ex", "avro", "county-1", 3, True)
    assert url.topic("county-1", TableId(None, "t")) == "ex.county-1.public.t"
    with pytest.raises(ConfigError) as problems:
        KafkaUrl.parse("kafka://nohost/ex?format=xml&partitions=0&bogus=1")
    text = str(problems.value)
    for expected in ("host:port", "format must be json or avro", "partitions", "unknown option(s) bogus"):
        assert expected in text


def test_typed_fields_are_written_only_with_values_of_their_kind():
    schema = _parsed()
    codec = Codec("avro", Registry(schema))
    for column, value in (("id", True), ("active", 1), ("企业名称", b"bytes"), ("logo", "text")):
        with pytest.raises(TypeError):  # never written as another kind's bytes: the column is evolved instead
            codec.encode("c", None, dict(ROW, **{column: value}), _event(), "n", [], schema)
        assert schema.misfits({column: value}) == [column]
    row = dict(ROW, score=3)  # an integer in a double column is written as the double it equals
    back = codec.decode(codec.encode("c", None, row, _event(), "n", [], schema), TABLE.id, ("id",))
    assert back.after["score"] == 3.0 and type(back.after["score"]) is float


def test_json_values_the_fast_encoder_cannot_write_exactly_still_round_trip():
    schema = _parsed()
    codec = Codec("json", Registry(schema))

    def back(**changes):
        row = dict(ROW, **changes)
        return codec.decode(codec.encode("c", None, row, _event(), "n", [], schema), TABLE.id, ("id",)).after
    for score in (float("inf"), float("-inf")):
        assert back(score=score)["score"] == score  # never null
    assert math.isnan(back(score=float("nan"))["score"])
    assert back(id=2**70 + 1)["id"] == 2**70 + 1


@given(st.text(), st.integers(-2**80, 2**80))
def test_the_fast_single_integer_message_key_is_the_same_bytes(column, value):
    import json

    from connectors.kafka.session import message_key

    general = json.dumps({column: value}, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")
    try:
        assert message_key((column,), (value,)) == general  # partitions and compaction depend on these bytes
    except UnicodeEncodeError:
        pass  # a lone surrogate in a column name: neither form can be UTF-8
