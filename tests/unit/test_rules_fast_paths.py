"""The shortcuts the rules hot path takes give the same results as the general path they skip.

Rows of the compiled shape are mapped by precomputed pairs, rows of any other shape column by column; value
maps convert through per-column copies of their codes; costly text parses and keyed hashes remember recent
texts; expressions read ``after.x`` inline. Each test here would fail if a shortcut answered differently.
"""

import gc
import hashlib
import hmac
from datetime import date, datetime
from decimal import Decimal

import pytest

from engine import functions
from engine.config import MappingConfig, PipelineConfig
from engine.event import ChangeEvent, Op, TableId
from engine.expressions import ExpressionError, compile_expression
from engine.functions import keyed_hash, memo_text
from engine.mapping import CompiledMapping
from engine.rules import RuleResources, Unmapped
from engine.schema import ColumnInfo, TableInfo

COLUMNS = ("id", "name", "status", "note")
SRC = TableInfo(TableId("public", "t"), tuple(ColumnInfo(n, "text") for n in COLUMNS), ("id",))
TGT = TableId("x", "t")


def pipeline(**extra):
    return PipelineConfig(name="p", source={"database": "a", "tables": ["public.t"]}, target={"database": "b"},
                          **extra)


def compiled(pipe=None, resources=None, **rules):
    pipe = pipe or pipeline()
    resources = resources or RuleResources(pipe, ".")
    return CompiledMapping(MappingConfig(source="public.t", **rules), SRC, ("id",), TGT, "mirror",
                           resources=resources)


def insert(after):
    return ChangeEvent(Op.CREATE, SRC.id, (after.get("id"),), None, after, 0, origin="county")


def mapped(mapping, after):
    return mapping.map(insert(after))[0].row


# ------------------------------------------------------------------ row shapes

def test_a_row_of_the_compiled_shape_and_any_other_shape_map_alike():
    m = compiled(columns={"id": "qyid", "name": {"to": "mc", "trim": True}, "status": {"map": {"1": "A"}}})
    full = {"id": 1, "name": " a ", "status": "1", "note": "n"}
    assert mapped(m, full) == {"qyid": 1, "mc": "a", "status": "A", "note": "n"}
    with_extras = compiled(columns={"id": "qyid", "name": {"to": "mc", "trim": True}}, constants={"c": 0},
                           computed={"k": "after.id + 1", "qyid": "after.id * 10"}, metadata={"op": "cz"})
    assert list(mapped(with_extras, full).items()) == [  # renames, converted, computed, constants, metadata
        ("qyid", 10), ("status", "1"), ("note", "n"), ("mc", "a"), ("k", 2), ("c", 0), ("cz", "c")]
    missing = {"id": 1, "name": " a ", "status": "1"}  # a partial image: what it has is mapped
    assert mapped(m, missing) == {"qyid": 1, "mc": "a", "status": "A"}
    same_width = {"id": 1, "name": " a ", "status": "1", "added": "x"}  # note gone, a new column instead
    assert mapped(m, same_width) == {"qyid": 1, "mc": "a", "status": "A", "added": "x"}
    wider = dict(full, added="x")
    assert mapped(m, wider) == {"qyid": 1, "mc": "a", "status": "A", "note": "n", "added": "x"}


def test_a_dropped_column_replaced_by_a_new_one_is_noticed():
    m = compiled(columns={"id": "qyid"}, drop=["note"])
    assert mapped(m, {"id": 1, "name": "a", "status": "1", "note": "n"}) == {"qyid": 1, "name": "a", "status": "1"}
    # as many columns as compiled, all kept ones present, but the dropped one replaced by a new column
    assert mapped(m, {"id": 1, "name": "a", "status": "1", "added": "x"}) == \
        {"qyid": 1, "name": "a", "status": "1", "added": "x"}
    listed_only = compiled(columns={"id": "qyid"}, drop=["note"], include_unlisted=False)
    assert mapped(listed_only, {"id": 1, "name": "a", "status": "1", "added": "x"}) == {"qyid": 1}


def test_an_error_of_a_converter_on_a_full_row_is_raised_not_taken_for_a_missing_column():
    m = compiled(columns={"status": {"map": {"1": "A"}, "unmapped": "reject"}})
    with pytest.raises(Unmapped, match="value '9' of column 'status'"):
        mapped(m, {"id": 1, "name": "a", "status": "9", "note": None})
    with pytest.raises(Unmapped, match="value '9' of column 'status'"):
        mapped(m, {"id": 1, "status": "9"})


# ------------------------------------------------------------------ NULL and every step kind

@pytest.mark.parametrize("rule", [
    {"trim": True}, {"normalize": True}, {"case": "upper"}, {"case": "lower"},
    {"cast": "int"}, {"cast": "decimal"}, {"cast": "text"}, {"cast": "date"}, {"cast": "timestamp"},
    {"cast": "decimal", "units": {"万元": 10000}}, {"cast": "date", "format": "%Y年%m月%d日"},
    {"cast": "timestamp", "format": "%Y-%m-%d %H:%M"}, {"cast": "text", "format": "%Y"},
    {"map": {"1": "A"}}, {"map": {"1": "A"}, "unmapped": "reject"},
    {"mask": "phone"}, {"mask": "id_card"}, {"mask": "hash"}, {"mask": "nullify"},
    {"trim": True, "cast": "int", "map": {"1": "A"}},
])
def test_null_stays_null_through_every_step(rule):
    m = compiled(pipeline(mask_key="k"), columns={"name": rule})
    assert mapped(m, {"id": 1, "name": None, "status": "1", "note": None})["name"] is None


def test_casts_and_parses_give_the_same_values_as_before_and_errors_each_time():
    m = compiled(columns={"name": {"cast": "decimal", "units": {"万元": 10000, "元": 1}},
                          "status": {"cast": "date", "format": "%Y年%m月%d日"},
                          "note": {"cast": "timestamp", "format": "%Y-%m-%d %H:%M"}})
    row = {"id": 1, "name": "12.5万元", "status": "2020年01月02日", "note": "2024-05-06 07:08"}
    for _ in range(2):  # the second time from the remembered texts
        out = mapped(m, row)
        assert out["name"] == Decimal("125000") and str(out["name"]) == str(Decimal("12.5") * 10000)
        assert out["status"] == date(2020, 1, 2) and out["note"] == datetime(2024, 5, 6, 7, 8)
    assert mapped(m, dict(row, name="1,234元"))["name"] == Decimal("1234")  # the general parser
    assert mapped(m, dict(row, name=12))["name"] == Decimal("12")
    for _ in range(2):  # a bad text is refused every time, not remembered as a result
        with pytest.raises(ValueError, match="unknown unit"):
            mapped(m, dict(row, name="3美元"))
        with pytest.raises(ValueError):
            mapped(m, dict(row, status="2020-01-02"))


# ------------------------------------------------------------------ value maps

def test_a_value_map_used_by_two_columns_reloads_in_both_and_forgets_dropped_mappings():
    tables = {"ref.codes": [{"code": "1", "name": "one"}, {"code": None, "name": "null code"}]}
    pipe = pipeline(value_maps={"codes": {"database": "a", "table": "ref.codes", "key": "code", "value": "name",
                                          "reload": 5, "unmapped": "null"}})
    resources = RuleResources(pipe, ".", load_table=lambda db, t: tables[t])
    m = compiled(pipe, resources, columns={"status": {"map": "codes"}, "note": {"map": "codes"}})
    other = compiled(pipe, resources, columns={"status": {"map": "codes"}})
    row = {"id": 1, "name": "a", "status": "1", "note": 1}
    assert mapped(m, row) == {"id": 1, "name": "a", "status": "one", "note": "one"}
    assert mapped(m, dict(row, status=None, note="2"))["status"] is None  # a NULL code never matches NULL
    assert mapped(m, dict(row, note="2"))["note"] is None
    del other
    gc.collect()
    tables["ref.codes"] = [{"code": "1", "name": "uno"}, {"code": "2", "name": "dos"}]
    value_map = resources.value_maps["codes"]
    value_map.loaded_at -= 10
    resources.refresh()
    assert mapped(m, dict(row, note="2")) == {"id": 1, "name": "a", "status": "uno", "note": "dos"}
    assert len(value_map._columns) == 2  # the copy of the dropped mapping is gone


@pytest.mark.parametrize("value, expected", [
    ("1", "A"), (1, "A"), (True, "A"), (1.0, "A"), (Decimal("1"), "A"), ("01", "zero-one"), (2, "keep"),
])
def test_value_map_lookups_match_text_and_numbers_as_before(value, expected):
    m = compiled(columns={"status": {"map": {"1": "A", "01": "zero-one"}}})
    out = mapped(m, {"id": 1, "name": "a", "status": value, "note": None})["status"]
    assert out == (value if expected == "keep" else expected)


# ------------------------------------------------------------------ remembered results

def test_keyed_hash_remembers_by_text_and_stays_exact():
    hash_value = keyed_hash(b"k")

    def direct(text):
        return hmac.new(b"k", text.encode(), hashlib.sha256).hexdigest()
    texts = [f"v{i}" for i in range(functions.MEMO_SIZE + 10)]  # more than it keeps
    for _ in range(2):
        assert [hash_value(t) for t in texts[:50] + texts[-50:]] == [direct(t) for t in texts[:50] + texts[-50:]]
    assert all(hash_value(t) == direct(t) for t in texts)
    assert (hash_value(1), hash_value(True), hash_value(1.0), hash_value("1")) == \
        (direct("1"), direct("true"), direct("1.0"), direct("1"))
    assert hash_value(None) is None
    assert keyed_hash(b"other")("v1") != hash_value("v1")


def test_memo_text_keeps_results_of_texts_only():
    calls = []

    def step(value):
        calls.append(value)
        if value == "bad":
            raise ValueError("bad")
        return repr(value)
    remembered = memo_text(step, size=2)
    assert [remembered(v) for v in ("a", "a", 1, 1, True, 1.0)] == ["'a'", "'a'", "1", "1", "True", "1.0"]
    assert calls == ["a", 1, 1, True, 1.0]  # text remembered; 1, True and 1.0 are never taken for each other
    for _ in range(2):
        with pytest.raises(ValueError):
            remembered("bad")
    assert calls.count("bad") == 2
    remembered("b"), remembered("c"), remembered("a")  # "a" was evicted (size 2): computed again
    assert calls[-3:] == ["b", "c", "a"]


# ------------------------------------------------------------------ expressions reading after.x inline

@pytest.mark.parametrize("text, after, expected", [
    ('after.status == "1"', {"status": "1"}, True),
    ('after.status != "1"', {"status": 1}, True),  # text never equals a number
    ('after.status == "1"', None, False),  # no image: its fields are null
    ("after.n > 2", {"n": 3}, True),
    ("after.n > 2.5", {"n": Decimal("3")}, True),
    ("region_parent(after.code)", {"code": "110101"}, "110100"),
    ("region_parent(row.code)", {"code": "110100"}, "110000"),
    ("region_parent(after.code)", None, None),
])
def test_inline_column_reads_give_what_the_general_read_gives(text, after, expected):
    event = insert({"id": 1})
    assert compile_expression(text).evaluate(after, None, event) == expected
    general = text.replace("after.", "(after).").replace("row.", "(row).")
    assert compile_expression(general).evaluate(after, None, event) == expected


def test_inline_column_reads_refuse_what_is_not_a_row():
    event = insert({"id": 1})
    for text in ('after.status == "1"', "after.n > 2", "region_parent(after.code)"):
        with pytest.raises(ExpressionError, match="cannot take field"):
            compile_expression(text).evaluate([1], None, event)


def test_errors_inside_filters_and_computed_columns_name_the_expression():
    m = compiled(computed={"p": "region_parent(after.status)"})
    with pytest.raises(ExpressionError, match=r"not a 6-digit region code: '1' \(in region_parent\(after.status\)\)"):
        mapped(m, {"id": 1, "name": "a", "status": "1", "note": None})
    f = compiled(filter="after.note > 1")
    with pytest.raises(ExpressionError, match="^ordering comparison with null$"):  # already an ExpressionError
        f.map(insert({"id": 1, "name": "a", "status": "1", "note": None}))
    with pytest.raises(ExpressionError, match="cannot compare"):
        f.map(insert({"id": 1, "name": "a", "status": "1", "note": "x"}))
