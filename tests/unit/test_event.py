"""ChangeEvent.evolve: the fast copy relaying nodes make of every change must keep every field."""

from dataclasses import fields, replace
from datetime import datetime, timezone

import pytest

from engine.event import ChangeEvent, Op, TableId

EVENT = ChangeEvent(Op.UPDATE, TableId("public", "qy"), (7,), {"id": 7, "v": "a"}, {"id": 7, "v": "b"}, 42,
                    txid=9, origin="county-110101", path=("county-110101",), origin_tier="county",
                    captured_at=datetime(2026, 11, 22, tzinfo=timezone.utc), source_node="capture-node",
                    source_database="biz", snapshot=True, meta={"batch": "b-1"})
CHANGES = {"op": Op.DELETE, "table": TableId(None, "qy_jbxx"), "key": (8,), "before": {"id": 8},
           "after": None, "path": ("county-110101", "city-110100"), "meta": {"batch": "b-2"}}


def test_every_field_has_a_value_unlike_the_next():
    """So the comparisons below notice a field that evolve drops or mixes up."""
    values = [getattr(EVENT, f.name) for f in fields(ChangeEvent)]
    assert all(v not in (None, (), {}, "", 0, False) for v in values)
    assert len({repr(v) for v in values}) == len(values)


@pytest.mark.parametrize("changed", [[], *[[name] for name in CHANGES], list(CHANGES)])
def test_evolve_is_replace(changed):
    wanted = {name: CHANGES[name] for name in changed}
    assert EVENT.evolve(**wanted) == replace(EVENT, **wanted)


def test_evolve_takes_no_field_it_does_not_copy():
    copied = {"op", "table", "key", "before", "after", "path", "meta"}
    with pytest.raises(TypeError):
        EVENT.evolve(seq=1)
    assert copied <= {f.name for f in fields(ChangeEvent)}
