"""The raw lane: pgoutput tuples as COPY text lines, and encoded rows through mapping, compaction and apply."""

from __future__ import annotations

import struct
from datetime import date
from decimal import Decimal

import pytest

from connectors.postgres import copytext
from connectors.postgres.copytext import COPY_TEXT, line_decoder, tuple_line
from connectors.postgres.logical import UNCHANGED, PgOutputError
from engine.apply import Batch, BatchApplier
from engine.compaction import compact
from engine.config import MappingConfig
from engine.encoded import EncodedRow, RowEncoding, plain
from engine.event import ChangeEvent, Op, TableId
from engine.mapping import CompiledMapping
from engine.schema import ColumnInfo, TableInfo

from .test_pgoutput_decode import tuple_data


def line_of(*values):
    return tuple_line(tuple_data(*values), 0)[0]


# ------------------------------------------------------------------ COPY text lines

@pytest.fixture(params=["compiled", "python"], autouse=True)
def implementation(request, monkeypatch):
    """Every test of this file runs with the C extension and with the Python reference (the two are held
    equal on any input in test_copytext.py)."""
    if request.param == "python":
        monkeypatch.setattr(copytext, "_compiled", None)
    return request.param


def test_plain_values_are_joined_by_tabs_and_nulls_written_as_backslash_n():
    assert line_of("1", "item 1", "2024-01-01") == b"1\titem 1\t2024-01-01"
    assert line_of("1", None, "") == b"1\t\\N\t"
    assert line_of("é中", "x") == "é中\tx".encode()


@pytest.mark.parametrize("hostile, escaped", [
    ("a\tb", b"a\\tb"), ("a\nb", b"a\\nb"), ("a\rb", b"a\\rb"), ("back\\slash", b"back\\\\slash"),
    ("\\N", b"\\\\N"), ("\\.", b"\\\\."), ("\t\n\r\\", b"\\t\\n\\r\\\\"),
])
def test_values_that_collide_with_the_format_are_escaped(hostile, escaped):
    assert line_of("7", hostile) == b"7\t" + escaped
    assert line_of(hostile, None) == escaped + b"\t\\N"  # the escaping path with NULLs too


def test_lengths_that_look_like_special_bytes_do_not_trigger_escaping():
    # 9 = tab, 10 = newline, 13 = carriage return, 92 = backslash: only as lengths, not in the values
    values = ["x" * 9, "y" * 10, "z" * 13, "w" * 92]
    assert line_of(*values) == b"\t".join(v.encode() for v in values)


def test_unchanged_toast_or_binary_values_give_no_line():
    assert tuple_line(tuple_data("1", UNCHANGED, "x"), 0)[0] is None
    assert tuple_line(tuple_data("1", b"\x00\x01"), 0)[0] is None


def test_raw_values_come_back_with_the_line():
    line, values = tuple_line(tuple_data("1", None, "a\tb"), 0)
    assert values == [b"1", None, b"a\tb"]


@pytest.mark.parametrize("broken", [
    tuple_data("abc")[:-1],  # value cut short
    struct.pack("!H", 2) + b"t" + struct.pack("!i", 1) + b"x",  # a column missing
    struct.pack("!H", 1) + b"q",  # unknown kind
    struct.pack("!H", 1) + b"t\x00",  # length cut short
])
def test_malformed_tuples_raise(broken):
    with pytest.raises(PgOutputError):
        tuple_line(broken, 0)


def test_line_decoder_is_the_inverse_with_each_columns_decoder():
    decode = line_decoder([int, None, Decimal, date.fromisoformat])
    for values in (("5", "a\tb\\c\nd\re", "1.50", "2024-02-29"), ("6", None, None, None),
                   ("7", "\\N", "0", "2024-01-01")):
        line = line_of(*values)
        expected = tuple(None if v is None else f(v) if f else v
                         for v, f in zip(values, (int, None, Decimal, date.fromisoformat)))
        assert decode(line) == expected
    with pytest.raises(ValueError):
        decode(b"1\t2")


# ------------------------------------------------------------------ through the engine

SRC = TableInfo(TableId("public", "item"), tuple(ColumnInfo(n, t) for n, t in
                                                  (("id", "bigint"), ("name", "text"), ("qty", "integer"))), ("id",))
TGT = TableId("public", "item_copy")
ENCODING = RowEncoding(COPY_TEXT, ("id", "name", "qty"), line_decoder([int, None, int]))


def encoded(i, name="a", qty=1):
    return EncodedRow(line_of(str(i), name, str(qty)), ENCODING)


def event(op, key, before=None, after=None, seq=0):
    return ChangeEvent(Op(op), SRC.id, (key,), before, after, seq, origin="county")


def mapping(mode="mirror", **rules):
    return CompiledMapping(MappingConfig(source="public.item", target=str(TGT), **rules), SRC, ("id",), TGT, mode)


def test_rename_only_rules_pass_encoded_rows_others_decode_them():
    assert mapping().passes_encoded and mapping(columns={"name": "title"}).passes_encoded
    for rules in ({"drop": ["qty"]}, {"constants": {"src": "x"}}, {"filter": "row.qty > 0"},
                  {"columns": {"qty": {"to": "qty", "cast": "decimal"}}}, {"key": ["name"]},
                  {"computed": {"total": "row.qty * 2"}}):
        assert not mapping(**rules).passes_encoded, rules

    [change] = mapping().map(event("c", 1, after=encoded(1)))
    assert type(change.row) is EncodedRow and change.key == (1,) and change.kind == "upsert"
    [change] = mapping(columns={"name": "title"}).map(event("u", 1, after=encoded(1, "b")))
    assert change.row.encoding.columns == ("id", "title", "qty") and change.row.line == encoded(1, "b").line
    assert change.row.values() == {"id": 1, "title": "b", "qty": 1}
    [change] = mapping("append").map(event("c", 1, after=encoded(1)))
    assert change.kind == "insert" and type(change.row) is EncodedRow

    ev = event("c", 1, after=encoded(1, qty=5))
    [change] = mapping(filter="row.qty > 3").map(ev)  # a filter needs the values: decoded into the event
    assert change.row == {"id": 1, "name": "a", "qty": 5} and ev.after == {"id": 1, "name": "a", "qty": 5}
    assert mapping(filter="row.qty > 9").map(event("c", 1, after=encoded(1, qty=5))) == []


def test_a_key_change_decodes_and_deletes_the_old_key():
    ev = event("u", 2, before={"id": 1}, after=encoded(2, "moved"))
    delete, upsert = mapping().map(ev)
    assert (delete.kind, delete.key) == ("delete", (1,))
    assert (upsert.kind, upsert.key, upsert.row) == ("upsert", (2,), {"id": 2, "name": "moved", "qty": 1})
    [same] = mapping().map(event("u", 2, before={"id": 2}, after=encoded(2)))
    assert type(same.row) is EncodedRow


def test_compaction_with_encoded_rows():
    m = mapping()
    changes = [c for e in (event("c", 1, after=encoded(1, "a")), event("u", 1, after={"id": 1, "qty": 9}),
                           event("c", 2, after={"id": 2, "name": "x", "qty": 1}), event("u", 2, after=encoded(2, "y")),
                           event("c", 3, after=encoded(3)), event("d", 3, before={"id": 3}))
               for c in m.map(e)]
    net = {c.key: c for c in compact(changes)}
    assert set(net) == {(1,), (2,)}  # 3 was inserted and deleted inside the batch
    assert net[(1,)].row == {"id": 1, "name": "a", "qty": 9}  # a partial image merged into an encoded one
    assert type(net[(2,)].row) is EncodedRow and plain(net[(2,)].row)["name"] == "y"  # complete: replaces


class Recorder:
    """A target session that records what it is asked to write."""

    def __init__(self, encoded_format):
        self.encoded_format = encoded_format
        self.calls = []

    def __getattr__(self, name):
        return lambda *args: self.calls.append((name, args))


@pytest.mark.parametrize("fmt", [COPY_TEXT, None])
def test_apply_hands_encoded_rows_to_a_session_that_takes_them_and_decodes_them_for_others(fmt):
    target = TableInfo(TGT, SRC.columns, ("id",))
    session = Recorder(fmt)
    m = mapping()
    changes = [c for e in (event("c", 1, after=encoded(1)), event("c", 2, after={"id": 2, "name": "b", "qty": 2}),
                           event("c", 3, after=encoded(3, "c\td")), event("u", 4, after=encoded(4)))
               for c in m.map(e)]
    BatchApplier(session, {TGT: target}).apply_open(Batch("p", changes, "pos", 4))
    upserts = [(name, args) for name, args in session.calls if name in ("upsert", "upsert_new")]
    rows = {name: [r for n, (_, _, _, batch) in upserts if n == name for r in batch]
            for name in ("upsert", "upsert_new")}
    assert all(columns == ["id", "name", "qty"] for _, (_, columns, _, _) in upserts)
    if fmt:
        assert len(upserts) == 3  # encoded rows and dict rows never share a call, nor inserted rows and updated ones
        assert sorted(r.line for r in rows["upsert_new"] if type(r) is EncodedRow) == [encoded(1).line,
                                                                                      encoded(3, "c\td").line]
        assert (2, "b", 2) in rows["upsert_new"]  # source inserts: the session may try a plain COPY first
        assert [r.line for r in rows["upsert"]] == [encoded(4).line]
    else:
        assert sorted(rows["upsert_new"]) == [(1, "a", 1), (2, "b", 2), (3, "c\td", 1)]
        assert rows["upsert"] == [(4, "a", 1)]
