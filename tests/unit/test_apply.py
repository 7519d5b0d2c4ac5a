"""The generic apply algorithm against an in-memory target that refuses rows and loses connections."""

import pytest

from engine.apply import Batch, BatchApplier
from engine.errors import TransientError
from engine.event import ChangeEvent, Op, TableId
from engine.mapping import TargetChange
from engine.schema import ColumnInfo, TableInfo
from tests.unit.fakes import MemoryTarget

PARENT = TableInfo(TableId("s", "parent"), (ColumnInfo("id", "int"), ColumnInfo("v", "int")), ("id",))
CHILD = TableInfo(TableId("s", "child"), (ColumnInfo("id", "int"), ColumnInfo("v", "int")), ("id",),
                  frozenset({PARENT.id}))


def change(kind, table, key, v=None, origin="county"):
    event = ChangeEvent(Op.CREATE if kind != "delete" else Op.DELETE, table.id, (key,), None, None, key,
                        origin=origin)
    return TargetChange(kind, table.id, (key,), None if kind == "delete" else {"id": key, "v": v}, event, ("id",))


def test_refused_rows_are_isolated_and_the_rest_applies():
    target = MemoryTarget(refuse=lambda table, row: row["v"] % 10 == 3)
    applier = BatchApplier(target, {PARENT.id: PARENT, CHILD.id: CHILD})
    batch = Batch("p", [change("upsert", PARENT, i, i) for i in range(100)], "pos:1", 100)
    result = applier.apply(batch)
    assert result.dead_letters == 10 and result.applied == 90
    assert sorted(target.tables[PARENT.id]) == [(i,) for i in range(100) if i % 10 != 3]
    assert sorted(d.key[0] for d in target.dead) == [i for i in range(100) if i % 10 == 3]
    assert target.checkpoints == {"p": "pos:1"}


def test_failed_commit_leaves_neither_rows_nor_checkpoint():
    target = MemoryTarget(fail_commit=1)
    applier = BatchApplier(target, {PARENT.id: PARENT})
    batch = Batch("p", [change("upsert", PARENT, 1, 1)], "pos:1", 1)
    with pytest.raises(TransientError):
        applier.apply(batch)
    assert target.tables.get(PARENT.id, {}) == {} and target.checkpoints == {}
    applier.apply(batch)
    applier.apply(batch)  # delivered again: same result
    assert target.tables[PARENT.id] == {(1,): {"id": 1, "v": 1}} and target.checkpoints == {"p": "pos:1"}


def test_parents_upserted_first_children_deleted_first():
    calls = []

    class Recording(MemoryTarget):
        def upsert(self, table, columns, key, rows):
            calls.append(("upsert", table.id.name))
            super().upsert(table, columns, key, rows)

        def delete(self, table, key, keys):
            calls.append(("delete", table.id.name))
            super().delete(table, key, keys)

    applier = BatchApplier(Recording(), {CHILD.id: CHILD, PARENT.id: PARENT})
    applier.apply(Batch("p", [change("upsert", CHILD, 1, 1), change("upsert", PARENT, 1, 1),
                              change("delete", PARENT, 2), change("delete", CHILD, 2)], "pos:1", 4))
    assert calls == [("delete", "child"), ("delete", "parent"), ("upsert", "parent"), ("upsert", "child")]


def test_origin_is_set_for_each_group():
    target = MemoryTarget()
    applier = BatchApplier(target, {PARENT.id: PARENT})
    applier.apply(Batch("p", [change("upsert", PARENT, 1, 1, origin="a"), change("upsert", PARENT, 2, 2, origin="b")],
                        "pos:1", 2))
    assert sorted(target.origins) == ["a", "b"]
