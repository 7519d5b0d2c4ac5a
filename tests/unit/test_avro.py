import math
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from uuid import uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.avro import decode, encode, envelope_schema
from engine.event import ChangeEvent, Op, TableId


def make(after):
    return ChangeEvent(Op.UPDATE, TableId("public", "enterprise"), (1, "k"), {"id": 1}, after, 42, txid=7,
                       origin="county-110101", path=("county-110101", "city-110100"),
                       captured_at=datetime(2026, 11, 21, 1, 2, 3, 456000, tzinfo=timezone.utc),
                       source_node="county-110101", source_database="county", origin_tier="county")


def test_envelope_round_trip_every_kind():
    after = {"int": 2**62, "dec": Decimal("-12345678901234.123456"), "text": "安全生产 𠀀 🚒", "f": 0.1 + 0.2,
             "b": True, "bytes": bytes(range(256)), "d": date(1, 1, 1), "t": time(23, 59, 59, 999999),
             "ts": datetime(2026, 1, 1, 8), "tstz": datetime(2026, 1, 1, 8, tzinfo=timezone(timedelta(hours=8))),
             "u": uuid4(), "j": {"a": [1, "二", None]}, "arr": [1, 2, None], "null": None}
    event = make(after)
    assert decode(encode(event)) == event


def test_schema_is_debezium_shaped():
    fields = {f["name"] for f in envelope_schema()["fields"]}
    assert {"before", "after", "source", "op", "ts_ms", "transaction"} <= fields


@settings(max_examples=50)
@given(st.dictionaries(st.text(min_size=1, max_size=8),
                       st.one_of(st.none(), st.integers(-2**63, 2**63 - 1), st.text(),
                                 st.floats(allow_nan=False), st.decimals(allow_nan=False, allow_infinity=False),
                                 st.binary(), st.booleans()), max_size=8))
def test_round_trip_property(after):
    event = make(after)
    assert decode(encode(event)) == event


# -------------------------------------------------------------- the kafka link's per-topic Avro (transports/kafka_avro)

def _link(topic="county-1.city-1.qy_jbxx"):
    from engine.debezium import SchemaRegistry
    from transports.kafka_avro import LinkReader, LinkTopicWriter

    registry = SchemaRegistry()
    return LinkTopicWriter(topic, topic.rsplit(".", 1)[1], registry), LinkReader(registry), registry


def _link_round_trip(events):
    from engine.debezium import from_json

    writer, reader, _ = _link()
    return [from_json(reader.to_json(writer.encode(e))) for e in events], writer


def _field_types(registry, sid) -> dict:
    from connectors.kafka.schemas import column_name

    fields = registry.schema(sid)["fields"][0]["type"][1]["fields"]
    return {column_name(f["name"]): f["type"] for f in fields}


def test_link_avro_round_trip_every_kind_with_names_given_per_branch():
    after = {"int": 2**62, "dec": Decimal("-12345678901234.123456"), "企业名称": "安全生产 𠀀", "f": 0.1 + 0.2,
             "b": True, "zero": False, "bytes": bytes(range(256)), "d": date(1, 1, 1), "t": time(23, 59, 59, 999999),
             "ts": datetime(2026, 1, 1, 8), "tstz": datetime(2026, 1, 1, 8, tzinfo=timezone(timedelta(hours=8))),
             "u": uuid4(), "j": {"a": [1, "二", None]}, "arr": [1, 2, None], "null": None,
             "ttz": time(8, 0, tzinfo=timezone.utc), "old": datetime(1, 1, 1, 0, 0, 0, 1)}
    (back,), writer = _link_round_trip([make(after)])
    assert back.after == after
    for column, value in after.items():  # equal and of the same kind: True stays a bool, not the integer 1
        assert type(back.after[column]) is type(value), column
    kinds = writer.kinds
    assert kinds["int"] == "long" and kinds["企业名称"] == "string" and kinds["dec"] == "decimal"
    assert kinds["ts"] == "timestamp" and kinds["d"] == "date" and kinds["f"] == "double"
    assert kinds["null"] == "any" and kinds["ttz"] == "any"  # no value seen yet; a time with a zone


def test_link_avro_fields_are_typed():
    writer, _, registry = _link()
    writer.encode(make({"id": 1, "name": "企业", "capital": Decimal("1.10"), "at": datetime(2026, 1, 1)}))
    types = _field_types(registry, writer.sid)
    assert types["id"] == ["null", "long"] and types["name"] == ["null", "string"]
    assert types["capital"][1]["connect.name"] == "tiersync.Decimal"
    assert types["at"][1]["connect.name"] == "io.debezium.time.MicroTimestamp"


def test_link_avro_integers_beyond_64_bits_stay_exact():
    (back,), _ = _link_round_trip([make({"big": 2**70 + 1, "neg": -(2**64)})])
    assert back.after == {"big": 2**70 + 1, "neg": -(2**64)}  # never the nearest double


def test_link_avro_a_value_its_field_cannot_hold_makes_the_column_any_kind_and_earlier_messages_still_decode():
    from engine.debezium import from_json

    writer, reader, registry = _link()
    first = writer.encode(make({"id": 1, "n": 5, "f": 1.5, "later": None}))
    first_id = writer.sid
    assert _field_types(registry, first_id)["n"] == ["null", "long"]
    rows = [{"id": 2, "n": 2**64, "f": float("nan"), "later": "x"}, {"id": 3, "n": "text", "f": float("-inf")},
            {"id": 4, "n": 7, "f": 2.0, "later": 9}]
    messages = [writer.encode(make(row)) for row in rows]
    assert writer.sid != first_id and writer.kinds["n"] == "any" and writer.kinds["later"] == "any"
    backs = [from_json(reader.to_json(m)).after for m in [first, *messages]]
    assert backs[0] == {"id": 1, "n": 5, "f": 1.5, "later": None}
    assert backs[1]["n"] == 2**64 and math.isnan(backs[1]["f"]) and backs[1]["later"] == "x"
    assert backs[2] == {"id": 3, "n": "text", "f": float("-inf")}
    assert backs[3] == rows[2] and type(backs[3]["n"]) is int


def test_link_avro_a_new_column_grows_the_schema_and_earlier_messages_still_decode():
    from engine.debezium import from_json

    writer, reader, _ = _link()
    first = writer.encode(make({"id": 1, "name": "a"}))
    first_id = writer.sid
    second = writer.encode(make({"id": 2, "name": "b", "联系电话": "010"}))
    assert writer.sid != first_id
    third = writer.encode(make({"id": 3}))  # a column left out of a row is absent, not NULL
    assert [from_json(reader.to_json(m)).after for m in (first, second, third)] == \
        [{"id": 1, "name": "a"}, {"id": 2, "name": "b", "联系电话": "010"}, {"id": 3}]


def test_link_avro_before_and_after_images_with_different_columns_stay_apart():
    from engine.debezium import from_json

    writer, reader, _ = _link()
    event = ChangeEvent(Op.UPDATE, TableId(None, "qy_jbxx"), (1,), {"id": 1}, {"id": 1, "name": None, "x": 2},
                        3, origin="county-1", path=("county-1",),
                        captured_at=datetime(2026, 11, 21, tzinfo=timezone.utc), source_node="county-1")
    back = from_json(reader.to_json(writer.encode(event)))
    assert back.before == {"id": 1} and back.after == {"id": 1, "name": None, "x": 2}


def test_link_avro_refuses_a_value_it_has_no_form_for():
    import pytest

    with pytest.raises(TypeError, match="no JSON form for object"):
        _link_round_trip([make({"x": object()})])


_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-2**80, 2**80), st.text(), st.floats(), st.binary(),
    st.decimals(allow_nan=False, allow_infinity=False), st.dates(), st.times(), st.datetimes(),
    st.datetimes(timezones=st.just(timezone(timedelta(hours=8)))), st.uuids(),
    st.dictionaries(st.text(max_size=4), st.one_of(st.integers(), st.text(), st.decimals(allow_nan=False,
                                                                                         allow_infinity=False))),
    st.lists(st.one_of(st.none(), st.integers(), st.text()), max_size=3))


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=8), _VALUES, max_size=8),
       st.one_of(st.integers(-2**63, 2**63 - 1), st.text(), st.decimals(allow_nan=False, allow_infinity=False),
                 st.dates()))
def test_link_avro_made_from_json_envelopes_means_the_event(after, key):
    """The sender turns the outbox's JSON envelopes into Avro without building events, the receiver turns Avro
    into JSON envelopes the same way: both must mean exactly what the event did, whatever kinds the writer's
    fields took from earlier rows."""
    from engine.debezium import envelope_key, from_json, parse_envelope, to_json

    after = {c: v for c, v in after.items() if not (isinstance(v, float) and v != v)}  # NaN is not equal to itself
    event = ChangeEvent(Op.UPDATE, TableId(None, "qy_jbxx"), (key,), dict(after), after, 42, txid=7,
                        origin="county-110101", path=("county-110101",),
                        captured_at=datetime(2026, 11, 21, 1, 2, 3, 456000, tzinfo=timezone.utc),
                        source_node="county-110101", source_database="county", origin_tier="county")
    writer, reader, _ = _link("county-110101.city-110100.qy_jbxx")
    doc = parse_envelope(to_json(event))
    assert envelope_key(doc, typed=True) == [key]
    assert from_json(reader.to_json(writer.encode_json(doc))) == event
    # a writer whose fields took their kinds from another row still writes this one exactly
    other, other_reader, _ = _link("county-110101.city-110100.qy_jbxx")
    other.encode(make({c: 1 for c in after}))
    doc = parse_envelope(to_json(event))
    assert from_json(other_reader.to_json(other.encode_json(doc))) == event


@pytest.mark.parametrize("after", [
    {"n": 2 ** 64, "m": -(2 ** 63) - 1, "big": 10 ** 30},  # orjson would read these as floats
    {"doc": {"price": Decimal("0.10000000000000000000001"), "list": [1.5, Decimal("1e-400")]}},  # a JSON column
    {"f": 0.1, "g": -1e300, "h": 5e-324, "i": 2 ** 63 - 1, "u": 2 ** 64 - 1, "neg": -(2 ** 63)},
    {"id_card": "110101199001011234567", "f": 0.1},  # a long run of digits in a text: the exact path, still right
    {"text": 'back\\slash "quoted" 引号 \\u0000', "nul": "a\x00b"},
])
def test_parsing_an_envelope_is_exact_on_either_path(after):
    """parse_envelope takes orjson where that is exact and the standard library elsewhere: the document (and the
    event read back) is the same as the exact decoder's, value for value and type for type."""
    from engine.debezium import ENVELOPE_DECODER, from_json, parse_envelope, to_json

    event = ChangeEvent(Op.CREATE, TableId(None, "t"), (1,), None, after, 3, origin="n", path=("n",),
                        captured_at=datetime(2026, 11, 21, tzinfo=timezone.utc), source_node="n")
    text = to_json(event)
    exact = ENVELOPE_DECODER.decode(text.decode())
    parsed = parse_envelope(text)

    def typed(value):
        if isinstance(value, dict):
            return {k: typed(v) for k, v in value.items()}
        if isinstance(value, list):
            return [typed(v) for v in value]
        if isinstance(value, (float, Decimal)):  # a double: its shortest text, whichever way it was read
            return "number", Decimal(repr(value)) if isinstance(value, float) else value
        return type(value).__name__, value
    assert typed(parsed) == typed(exact)
    assert from_json(text) == event


def test_json_envelopes_keep_non_finite_floats_and_exact_numbers():
    import math

    from engine.debezium import from_json, to_json

    after = {"f": float("-inf"), "nan": float("nan"), "doc": {"x": float("nan"), "d": Decimal("1.10")},
             "big": 2**70}
    back = from_json(to_json(make(after))).after
    assert back["f"] == float("-inf") and math.isnan(back["nan"]) and math.isnan(back["doc"]["x"])
    assert str(back["doc"]["d"]) == "1.10" and back["big"] == 2**70


def test_plain_json_envelopes_take_the_fast_encoder():
    from engine.debezium import to_json

    text = to_json(make({"id": 1, "name": "企业", "capital": Decimal("1.10"), "at": datetime(2026, 1, 1)}))
    assert b'": ' not in text and b", " not in text  # orjson's compact text: the exact encoder was not needed


def test_link_avro_reads_messages_written_before_typed_fields():
    """A topic may still hold messages of the earlier schema (every column a tiersync.Value record) when the
    receiving end is upgraded: they are read as before."""
    import json

    from engine.avro import SCHEMA_DIR, schema_id, to_union, wire_encode
    from engine.debezium import SchemaRegistry, from_json
    from transports.kafka_avro import LinkReader

    def load(name):
        return json.loads((SCHEMA_DIR / f"{name}.avsc").read_text(encoding="utf-8"))

    ns = "county_x2d_1.city_x2d_1.qy__jbxx"
    value = {"type": "record", "name": "Value", "namespace": ns, "fields": [
        {"name": "id", "type": ["null", load("Value")], "default": None},
        {"name": "_x540d__x79f0_", "type": ["null", "tiersync.Value"], "default": None}]}  # 名称, escaped
    schema = {"type": "record", "name": "Envelope", "namespace": ns, "fields": [
        {"name": "before", "type": ["null", value], "default": None},
        {"name": "after", "type": ["null", f"{ns}.Value"], "default": None},
        {"name": "source", "type": load("Source")},
        {"name": "op", "type": {"type": "enum", "name": "Operation", "symbols": ["c", "u", "d", "r", "t"]}},
        {"name": "ts_ms", "type": ["null", "long"], "default": None},
        {"name": "transaction", "type": ["null", {"type": "record", "name": "Transaction", "fields": [
            {"name": "id", "type": "string"}, {"name": "total_order", "type": "long"},
            {"name": "data_collection_order", "type": "long"}]}], "default": None},
        {"name": "origin", "type": "string"},
        {"name": "path", "type": {"type": "array", "items": "string"}, "default": []},
        {"name": "key", "type": {"type": "array", "items": "tiersync.Value"}, "default": []}]}
    registry = SchemaRegistry()
    sid = registry.register(schema)
    event = make({"id": 1, "名称": Decimal("1.10")})
    record = {"before": None, "after": {"id": {"v": to_union(1)}, "_x540d__x79f0_": {"v": to_union(Decimal("1.10"))}},
              "source": {"version": "tiersync", "connector": "tiersync", "name": "county-110101",
                         "ts_ms": 1795222923456, "snapshot": "false", "db": "county", "schema": "public",
                         "table": "enterprise", "txId": 7, "sequence": None, "seq": 42, "origin_tier": "county"},
              "op": "u", "ts_ms": None, "transaction": None, "origin": "county-110101",
              "path": ["county-110101", "city-110100"], "key": [{"v": to_union(1)}, {"v": to_union("k")}]}
    message = wire_encode(sid, registry.parsed(sid), record)
    assert schema_id(schema) == sid
    back = from_json(LinkReader(registry).to_json(message))
    assert back.after == {"id": 1, "名称": Decimal("1.10")} and back.key == (1, "k")
    assert back.origin_tier == "county" and back.path == event.path and back.seq == 42


def test_link_avro_reader_says_why_a_message_cannot_be_read():
    import pytest

    writer, reader, _ = _link()
    message = writer.encode(make({"id": 1, "name": "企业"}))
    with pytest.raises(ValueError, match="does not match schema"):
        reader.to_json(message[:-3])  # cut short
    with pytest.raises(ValueError, match="bad magic byte 0x7b"):
        reader.to_json(b'{"op": "c"}')
    with pytest.raises(KeyError, match="unknown schema id"):
        reader.to_json(b"\x00\x00\x00\x00\x07" + message[5:])
