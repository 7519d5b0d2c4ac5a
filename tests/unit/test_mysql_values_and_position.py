"""MySQL/MariaDB connector rules that need no server: change-log positions, literals, value decoders."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal

import pytest

from connectors.mysql.position import MysqlLogPosition, without
from connectors.mysql.reader import _missing, _same_origin_prefix, _subtract
from connectors.mysql.values import literal, row_literal, value_decoder, value_writer


def test_position_round_trip_and_floor():
    pos = MysqlLogPosition(1042, ((1007, 1007), (1010, 1012)))
    assert pos.serialise() == "mylog:1042|1007,1010-1012"
    assert MysqlLogPosition.deserialise(pos.serialise()) == pos
    assert pos.floor == 1006
    assert MysqlLogPosition(5).floor == 5
    assert MysqlLogPosition.deserialise("mylog:0|") == MysqlLogPosition()


@pytest.mark.parametrize("text", ["mylog:abc|", "mylog:10", "mylog:10|12", "mylog:10|5-3", "mylog:10|3,2",
                                  "mylog:10|0", "pglog:1:1:|1:1:|0"])
def test_malformed_positions_are_refused(text):
    with pytest.raises(ValueError):
        MysqlLogPosition.deserialise(text)


def test_gap_arithmetic():
    assert _missing(10, 20, {11, 12, 15, 20}) == [(13, 14), (16, 19)]
    assert _missing(10, 12, {11, 12}) == []
    assert without(((1, 10), (20, 25)), {1, 5, 25, 30}) == ((2, 4), (6, 10), (20, 24))
    assert _subtract(((1, 10), (20, 25)), ((3, 21),)) == ((1, 2), (22, 25))


def test_one_origin_per_batch_other_tables_pass():
    rows = [(1, "t", "c", "", "{}", "a", None), (2, "x", "c", None, None, "b", None),
            (3, "t", "c", "", "{}", "a", None), (4, "t", "c", "", "{}", "b", None)]
    assert [r[0] for r in _same_origin_prefix(rows)] == [1, 2, 3]


def test_literals_are_exact_and_refuse_what_mysql_cannot_hold():
    assert row_literal((1, "it's \\ 😀", None, True, Decimal("1.10"), b"\x00\xff", date(2026, 1, 2))) == \
        "(1,'it\\'s \\\\ 😀',NULL,1,1.10,X'00ff','2026-01-02')"
    assert literal(datetime(2026, 1, 1, 8, tzinfo=timezone(timedelta(hours=8)))) == "'2026-01-01 00:00:00'"
    assert literal({"金额": Decimal("12.50")}) == r"""'{\"金额\": 12.50}'"""  # exact number, MySQL escapes
    assert literal([1, 2]) == "'[1, 2]'"
    assert literal(Decimal("1E+3")) == "1000"
    for bad in (float("nan"), float("inf"), Decimal("NaN")):
        with pytest.raises(ValueError):
            row_literal((bad,))


def test_decoders_follow_the_conversion_table():
    assert value_decoder("int(11)", "t", "c") is None
    assert value_decoder("decimal(10,2)", "t", "c")(Decimal("1.50")) == Decimal("1.50")
    assert value_decoder("varbinary(4)", "t", "c")("00FF") == b"\x00\xff"
    assert value_decoder("datetime(6)", "t", "c")("2026-11-21 10:00:00.250000") == datetime(2026, 11, 21, 10, 0, 0,
                                                                                            250000)
    assert value_decoder("timestamp(6)", "t", "c")(Decimal("1767225600.500000")) == \
        datetime(2026, 1, 1, 0, 0, 0, 500000, tzinfo=timezone.utc)
    assert value_decoder("time(6)", "t", "c")("23:59:59.000001") == time(23, 59, 59, 1)
    assert value_decoder("time", "t", "c")("-12:00:01") == "-12:00:01"
    assert value_decoder("date", "t", "c")("0000-00-00") is None
    assert value_decoder("date", "t", "c", keep_zero_dates=True)("0000-00-00") == "0000-00-00"
    assert value_decoder("timestamp", "t", "c")(0) is None
    assert value_decoder("json", "t", "c")({"a": Decimal("0.1"), "b": Decimal("1.10")}) == {"a": 0.1,
                                                                                           "b": Decimal("1.10")}


def test_writers_refuse_silent_rounding():
    scale2 = value_writer("decimal(10,2)")
    assert scale2(Decimal("1.50")) == Decimal("1.50") and scale2(Decimal("1.5000")) == Decimal("1.5000")
    with pytest.raises(ValueError):
        scale2(Decimal("1.005"))
    whole_seconds = value_writer("datetime")
    assert whole_seconds(datetime(2026, 1, 1)) == datetime(2026, 1, 1)
    with pytest.raises(ValueError):
        whole_seconds(datetime(2026, 1, 1, 0, 0, 0, 500000))
    assert value_writer("datetime(6)")("2026-01-01T08:00:00+08:00") == \
        datetime(2026, 1, 1, 8, tzinfo=timezone(timedelta(hours=8)))
    assert value_writer("json")("text") == '"text"'
