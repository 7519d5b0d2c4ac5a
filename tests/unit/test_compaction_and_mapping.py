import random
from datetime import date
from decimal import Decimal

import pytest

from engine.compaction import _merge, compact
from engine.config import MappingConfig
from engine.event import ChangeEvent, Op, TableId
from engine.mapping import CompiledMapping
from engine.schema import ColumnInfo, TableInfo

SRC = TableInfo(TableId("public", "enterprise"),
                tuple(ColumnInfo(n, "text") for n in ("id", "name", "region_code", "capital", "note")), ("id",))
TGT = TableId("exchange", "qy_jbxx")


def event(op, key, before=None, after=None, seq=0, origin="county"):
    return ChangeEvent(Op(op), SRC.id, (key,), before, after, seq, origin=origin)


def mapping(mode="mirror", **rules):
    config = MappingConfig(source="public.enterprise", target="exchange.qy_jbxx",
                           columns={"id": "qyid", "name": "qymc", "region_code": "xzqh"}, **rules)
    return CompiledMapping(config, SRC, ("id",), TGT, mode)


def row(i, name="a", capital="1"):
    return {"id": i, "name": name, "region_code": "110101", "capital": capital, "note": None}


def test_rename_drop_constant_cast():
    m = mapping(drop=["note"], constants={"sjly": "county"})
    rules = MappingConfig(source="public.enterprise", columns={"capital": {"to": "zczb", "cast": "decimal"}},
                          drop=["note"])
    m2 = CompiledMapping(rules, SRC, ("id",), TGT, "mirror")
    [change] = m.map(event("c", 1, after=row(1)))
    assert change.kind == "upsert" and change.key == (1,)
    assert change.row == {"qyid": 1, "qymc": "a", "xzqh": "110101", "capital": "1", "sjly": "county"}
    [change] = m2.map(event("c", 1, after=row(1, capital="12.50")))
    assert change.row["zczb"] == Decimal("12.50") and "note" not in change.row


def test_key_change_becomes_delete_then_upsert():
    changes = mapping().map(event("u", 2, before=row(1), after=row(2)))
    assert [(c.kind, c.key) for c in changes] == [("delete", (1,)), ("upsert", (2,))]


def test_modes():
    delete = event("d", 1, before=row(1))
    assert [c.kind for c in mapping("mirror").map(delete)] == ["delete"]
    assert mapping("upsert").map(delete) == []
    assert mapping("append").map(delete) == []  # no op column to say it was a delete
    history = mapping("append", metadata={"op": "change_op"})
    [change] = history.map(delete)
    assert change.kind == "insert" and change.row["change_op"] == "d"
    [change] = mapping("append").map(event("u", 1, before=row(1), after=row(1, "b")))
    assert change.kind == "insert" and change.row["qymc"] == "b"


def test_cast_failure_raises_for_the_dead_letter_path():
    m = CompiledMapping(MappingConfig(source="public.enterprise", columns={"capital": {"cast": "int"}}),
                        SRC, ("id",), TGT, "mirror")
    with pytest.raises(ValueError):
        m.map(event("c", 1, after=row(1, capital="1.5")))


def test_column_added_at_the_source_after_compiling_passes_through_unless_listed_only():
    extra = {**row(1), "new_col": 7}
    [change] = mapping().map(event("c", 1, after=extra))
    assert change.row["new_col"] == 7
    [change] = mapping(include_unlisted=False).map(event("c", 1, after=extra))
    assert set(change.row) == {"qyid", "qymc", "xzqh"}


def net(*events, mode="mirror"):
    m = mapping(mode)
    return [(c.kind, c.key, c.row and c.row["qymc"]) for c in compact([c for e in events for c in m.map(e)])]


def test_compaction_rules():
    assert net(event("c", 1, after=row(1, "a")), event("u", 1, before=row(1, "a"), after=row(1, "b"))) == \
        [("upsert", (1,), "b")]
    assert net(event("c", 1, after=row(1)), event("d", 1, before=row(1))) == []
    assert net(event("d", 1, before=row(1)), event("c", 1, after=row(1, "z"))) == [("upsert", (1,), "z")]
    assert net(event("u", 1, before=row(1), after=row(1, "b")), event("d", 1, before=row(1, "b"))) == \
        [("delete", (1,), None)]
    assert net(event("c", 1, after=row(1, "a")), event("d", 1, before=row(1)), event("c", 1, after=row(1, "c"))) == \
        [("upsert", (1,), "c")]
    # appends are history: never compacted
    assert len(net(event("c", 1, after=row(1)), event("u", 1, before=row(1), after=row(1, "b")), mode="append")) == 2


def test_compaction_merges_partial_rows():
    m = mapping()
    first = m.map(event("c", 1, after=row(1, "a", "5")))
    partial = m.map(event("u", 1, before=None, after={"id": 1, "name": "b"}))
    [change] = compact(first + partial)
    assert change.row["qymc"] == "b" and change.row["capital"] == "5"


def test_casts():
    from engine.casts import caster
    assert caster("bool")("yes") is True and caster("bool")(0) is False
    assert caster("date")("2026-11-21T10:00:00") == date(2026, 11, 21)
    assert caster("int")(None) is None
    assert caster("decimal")(0.1) == Decimal("0.1")
    with pytest.raises(ValueError):
        caster("bool")("maybe")


@pytest.mark.parametrize("seed", range(40))
def test_batches_without_repeated_keys_take_the_short_way_to_the_same_result(seed):
    """compact skips the merge when no key repeats; any batch, repeated keys or not, comes out as the merge has it."""
    rng = random.Random(seed)
    m = mapping(rng.choice(["mirror", "mirror", "append"]))
    keys = rng.sample(range(50), 8) if seed % 2 else [rng.randrange(4) for _ in range(8)]
    events = [event(rng.choice("cud"), k, before=row(k), after=row(k, str(i))) for i, k in enumerate(keys)]
    changes = [c for e in events for c in m.map(e)]
    if seed % 5 == 0:
        changes += m.map(ChangeEvent(Op.TRUNCATE, SRC.id, (), None, None, 99))
    assert [(c.kind, c.key, c.row) for c in compact(changes)] == [(c.kind, c.key, c.row) for c in _merge(changes)]
