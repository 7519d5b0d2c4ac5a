from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from uuid import uuid4

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.avro import decode, encode, envelope_schema
from engine.event import ChangeEvent, Op, TableId


def make(after):
    return ChangeEvent(Op.UPDATE, TableId("public", "enterprise"), (1, "k"), {"id": 1}, after, 42, txid=7,
                       origin="county-110101", path=("county-110101", "city-110100"),
                       captured_at=datetime(2026, 11, 21, 1, 2, 3, 456000, tzinfo=timezone.utc),
                       source_node="county-110101", source_database="county")


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
