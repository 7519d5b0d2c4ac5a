"""The reference normalisation of reconcile: equal values give equal text, different values different text."""

from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal

import pytest

from engine.reconcile import encode_values, jsonb_text, key_hash, normalise, parse_json_text

SHANGHAI = timezone(timedelta(hours=8))


@pytest.mark.parametrize("kind, a, b", [
    ("int", 5, "5"),
    ("int", 5, Decimal("5")),
    ("decimal", Decimal("1.50"), Decimal("1.5")),
    ("decimal", Decimal("100"), Decimal("1E+2")),
    ("decimal", Decimal("-0.00"), 0),
    ("decimal", Decimal("12345678901234567890.1234567890"), "12345678901234567890.123456789"),
    ("decimal", 1.5, "1.500"),
    ("float", 0.1 + 0.2, 0.30000000000000004),
    ("float", -0.0, 0.0),
    ("float", 3, 3.0),
    ("bool", True, 1),
    ("bool", "t", True),
    ("timestamp", datetime(2024, 3, 1, 8, 0, tzinfo=SHANGHAI), datetime(2024, 3, 1, 0, 0, tzinfo=timezone.utc)),
    ("timestamp", datetime(2024, 3, 1, 0, 0, tzinfo=timezone.utc), datetime(2024, 3, 1, 0, 0)),  # naive = UTC
    ("timestamp", "2024-03-01T08:00:00+08:00", "2024-03-01 00:00:00"),
    ("timestamp", datetime(2024, 3, 1, 0, 0, 0, 250000), "2024-03-01 00:00:00.25"),
    ("date", date(2024, 3, 1), "2024-03-01"),
    ("time", time(12, 0, 0, 500000), "12:00:00.5"),
    ("json", {"b": 1, "a": [1, "中"]}, parse_json_text('{"a": [1, "中"], "b": 1}')),
    ("json", {"long": 1, "z": 2}, parse_json_text('{"z":2,"long":1}')),  # jsonb orders keys by length first
    ("bytes", b"\x00\xff", "\\x00ff"),
    ("text", "北京", "北京"),
])
def test_equal_values_give_equal_text(kind, a, b):
    assert normalise(kind, a) == normalise(kind, b)


@pytest.mark.parametrize("kind, a, b", [
    ("text", "", None),  # NULL is not the empty string
    ("text", "a", "a "),  # trailing spaces count
    ("text", "北京", "北京市"),
    ("float", 0.1 + 0.2, 0.3),
    ("decimal", Decimal("1.5"), Decimal("1.51")),
    ("timestamp", datetime(2024, 3, 1, 8, 0, tzinfo=SHANGHAI), datetime(2024, 3, 1, 8, 0, tzinfo=timezone.utc)),
    ("timestamp", datetime(2024, 3, 1), datetime(2024, 3, 1, 0, 0, 0, 1)),
    ("bool", True, False),
    ("json", {"a": 1}, {"a": 2}),
    ("json", {"a": "1"}, {"a": 1}),
    ("json", "s", parse_json_text('"t"')),
])
def test_different_values_give_different_text(kind, a, b):
    assert normalise(kind, a) != normalise(kind, b)


def test_encoding_is_unambiguous():
    assert encode_values(["a,b", "c"]) != encode_values(["a", "b,c"])
    assert encode_values([None]) != encode_values(["\\N"])
    assert encode_values(["a\\", "b"]) != encode_values(["a\\,b"])
    assert encode_values([""]) != encode_values([None])


def test_key_hash_of_integer_keys_is_the_key():
    assert key_hash(("int",), (12345,), "12345") == 12345
    assert key_hash(("int",), (-1,), "-1") == (1 << 60) - 1
    assert key_hash(("text",), ("a",), "a") == int("0cc175b9c0f1b6a831c399e269772661"[:15], 16)


def test_jsonb_text_numbers_and_strings():
    assert jsonb_text([Decimal("1E+2"), 0.5, -0.0, "a\"b\n"]) == '[100, 0.5, 0.0, "a\\"b\\n"]'
