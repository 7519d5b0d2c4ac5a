"""Conflict policies (engine.conflict) through the real mapping, compaction and applier, on the in-memory target."""

from datetime import datetime, timedelta, timezone
from decimal import Decimal

from engine.apply import Batch, BatchApplier
from engine.config import MappingConfig
from engine.conflict import NO_ROW, ConflictRule, same_value
from engine.debezium import from_json, to_json
from engine.event import ChangeEvent, Op, TableId
from engine.mapping import CompiledMapping
from engine.plan import conflict_rule
from engine.schema import ColumnInfo, TableInfo
from tests.unit.fakes import MemoryTarget

SRC = TableInfo(TableId("public", "item"), tuple(ColumnInfo(n, "text") for n in ("id", "name", "qty")), ("id",))
TGT = TableInfo(TableId("x", "item"), tuple(ColumnInfo(n, "text") for n in ("id", "mc", "qty", "tier", "ts")),
                ("id",))
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def compiled(conflict, **metadata):
    config = MappingConfig(source="public.item", target="x.item", columns={"name": "mc"}, conflict=conflict,
                           metadata=metadata)
    return CompiledMapping(config, SRC, ("id",), TGT.id, "mirror")


def event(op, key, before=None, after=None, tier="county", at=T0, origin="n-county"):
    return ChangeEvent(Op(op), SRC.id, (key,), before, after, key, origin=origin, origin_tier=tier, captured_at=at)


def apply(mapping, target, events, node_tier="city"):
    rules = {TGT.id: conflict_rule(mapping)}
    applier = BatchApplier(target, {TGT.id: TGT}, rules, node_tier)
    changes = [c for e in events for c in mapping.map(e)]
    return applier.apply(Batch("p", changes, "pos:1", len(events)))


def seeded(*rows):
    target = MemoryTarget()
    target.tables[TGT.id] = {(r["id"],): dict(r) for r in rows}
    return target


def item(i, mc="a", qty="1", **extra):
    return {"id": i, "mc": mc, "qty": qty, **extra}


# ------------------------------------------------------------------ reject

def test_reject_sends_changes_to_rows_changed_by_someone_else_to_dead_letters_and_applies_the_rest():
    mapping = compiled("reject")
    target = seeded(item(1, "a"), item(2, "changed here"), item(3, "a"), item(4, "other"))
    events = [
        event("u", 1, {"id": 1, "name": "a", "qty": "1"}, {"id": 1, "name": "b", "qty": "1"}),  # matches: applies
        event("u", 2, {"id": 2, "name": "a", "qty": "1"}, {"id": 2, "name": "b", "qty": "1"}),  # changed: rejected
        event("d", 3, {"id": 3, "name": "zzz", "qty": "1"}),  # delete of a row that differs: rejected
        event("c", 4, None, {"id": 4, "name": "new", "qty": "1"}),  # insert over different values: rejected
        event("c", 5, None, {"id": 5, "name": "new", "qty": "1"}),  # plain insert: applies
        event("u", 6, {"id": 6, "name": "a", "qty": "1"}, {"id": 6, "name": "b", "qty": "1"}),  # row gone: rejected
    ]
    result = apply(mapping, target, events)
    data = target.tables[TGT.id]
    assert data[(1,)]["mc"] == "b" and data[(5,)]["mc"] == "new"
    assert data[(2,)]["mc"] == "changed here" and data[(3,)]["mc"] == "a" and data[(4,)]["mc"] == "other"
    assert (6,) not in data
    reasons = {d.key[0]: d.error for d in target.dead}
    assert sorted(reasons) == [2, 3, 4, 6]
    assert reasons[2].startswith("conflict: reject: the target row changed")
    assert "mc (target 'changed here'" in reasons[2]
    assert "already exists with different values" in reasons[4]
    assert "no longer exists" in reasons[6]
    assert result.applied == 2 and result.dead_letters == 4
    assert target.checkpoints == {"p": "pos:1"}


def test_reject_is_idempotent_when_a_batch_is_applied_again():
    mapping = compiled("reject")
    target = seeded(item(1, "a"))
    events = [event("u", 1, {"id": 1, "name": "a", "qty": "1"}, {"id": 1, "name": "b", "qty": "1"}),
              event("c", 2, None, {"id": 2, "name": "n", "qty": "1"}),
              event("d", 1, {"id": 1, "name": "b", "qty": "1"}, None)]
    apply(mapping, target, events[:2])
    apply(mapping, target, events[:2])  # delivered again after a crash: the target already holds these values
    assert target.dead == [] and target.tables[TGT.id][(1,)]["mc"] == "b"
    apply(mapping, target, events[2:])
    apply(mapping, target, events[2:])
    assert target.dead == [] and (1,) not in target.tables[TGT.id]


def test_reject_without_a_before_image_applies_what_it_cannot_prove():
    mapping = compiled("reject")
    target = seeded(item(1, "changed here"))
    apply(mapping, target, [event("u", 1, None, {"id": 1, "name": "b", "qty": "1"})])
    assert target.dead == [] and target.tables[TGT.id][(1,)]["mc"] == "b"


def test_reject_compares_the_state_before_the_batch_when_changes_are_compacted():
    mapping = compiled("reject")
    target = seeded(item(1, "a"), item(2, "someone else"))
    events = [event("u", 1, {"id": 1, "name": "a", "qty": "1"}, {"id": 1, "name": "b", "qty": "1"}),
              event("u", 1, {"id": 1, "name": "b", "qty": "1"}, {"id": 1, "name": "c", "qty": "1"}),
              event("u", 2, {"id": 2, "name": "a", "qty": "1"}, {"id": 2, "name": "b", "qty": "1"}),
              event("u", 2, {"id": 2, "name": "b", "qty": "1"}, {"id": 2, "name": "c", "qty": "1"})]
    apply(mapping, target, events)
    assert target.tables[TGT.id][(1,)]["mc"] == "c"
    assert target.tables[TGT.id][(2,)]["mc"] == "someone else" and [d.key for d in target.dead] == [[2]]


def test_reject_expects_no_row_at_a_new_key_and_the_before_image_at_the_old_one():
    mapping = compiled("reject")
    change = mapping.map(event("u", 1, {"id": 1, "name": "a", "qty": "1"}, {"id": 9, "name": "a", "qty": "1"}))
    assert [(c.kind, c.key) for c in change] == [("delete", (1,)), ("upsert", (9,))]
    assert change[0].expected == {"id": 1, "mc": "a", "qty": "1"} and change[1].expected is NO_ROW


# ------------------------------------------------------------------ higher_tier_wins

def test_higher_tier_wins_keeps_rows_written_from_a_higher_tier():
    mapping = compiled("higher_tier_wins", tier="tier")
    target = seeded(item(1, "national", tier="national"), item(2, "county", tier="county"),
                    item(3, "local", tier=None), item(4, "province", tier="province"))
    events = [event("u", 1, None, {"id": 1, "name": "from county", "qty": "1"}),  # national row: kept
              event("u", 2, None, {"id": 2, "name": "from county", "qty": "1"}),  # same tier: applies
              event("u", 3, None, {"id": 3, "name": "from county", "qty": "1"}),  # local at a city node: kept
              event("d", 4, {"id": 4, "name": "x", "qty": "1"}, None)]  # delete of a province row: kept
    result = apply(mapping, target, events, node_tier="city")
    data = target.tables[TGT.id]
    assert data[(1,)]["mc"] == "national" and data[(3,)]["mc"] == "local" and data[(4,)]["mc"] == "province"
    assert data[(2,)] == {"id": 2, "mc": "from county", "qty": "1", "tier": "county"}
    reasons = {d.key[0]: d.error for d in target.dead}
    assert sorted(reasons) == [1, 3, 4] and result.dead_letters == 3
    assert reasons[1].startswith("conflict: higher_tier_wins: the target row was last written from tier national")
    assert "locally at this node" in reasons[3]


def test_higher_tier_wins_lets_a_higher_or_unknown_tier_through():
    mapping = compiled("higher_tier_wins", tier="tier")
    target = seeded(item(1, "county", tier="county"), item(2, "province", tier="province"))
    apply(mapping, target, [event("u", 1, None, {"id": 1, "name": "national", "qty": "1"}, tier="national"),
                            event("u", 2, None, {"id": 2, "name": "unknown", "qty": "1"}, tier="")])
    data = target.tables[TGT.id]
    assert data[(1,)]["mc"] == "national" and data[(1,)]["tier"] == "national"
    assert data[(2,)]["mc"] == "unknown" and target.dead == []


def test_higher_tier_wins_settles_changes_of_different_tiers_to_one_key_in_their_order():
    """A province change and then a county change to the same key in one batch (the province relays both): the
    province's applies, the county's is refused, as if applied one by one; compaction must not merge them into
    one change carrying the county's tier (which would drop the province's change with it)."""
    mapping = compiled("higher_tier_wins", tier="tier")
    target = seeded(item(1, "old", tier="province"), item(2, "old", tier="county"))
    result = apply(mapping, target, [
        event("u", 1, None, {"id": 1, "name": "province's", "qty": "2"}, tier="province", origin="n-province"),
        event("u", 1, None, {"id": 1, "name": "county's", "qty": "3"}, tier="county"),
        event("u", 2, None, {"id": 2, "name": "county's", "qty": "1"}, tier="county"),
        event("u", 2, None, {"id": 2, "name": "county's again", "qty": "2"}, tier="county")], node_tier="national")
    data = target.tables[TGT.id]
    assert data[(1,)] == {"id": 1, "mc": "province's", "qty": "2", "tier": "province"}
    assert data[(2,)] == {"id": 2, "mc": "county's again", "qty": "2", "tier": "county"}
    assert [(d.key, d.error.split(":")[1].strip()) for d in target.dead] == [([1], "higher_tier_wins")]
    assert result.dead_letters == 1 and result.compacted_away == 1  # key 2's two county changes still merge


def test_the_origin_tier_travels_in_the_envelope():
    sent = event("u", 1, None, {"id": 1, "name": "a", "qty": "1"}, tier="province")
    assert from_json(to_json(sent)).origin_tier == "province"
    assert from_json(to_json(event("c", 1, None, {"id": 1}, tier=""))).origin_tier == ""


# ------------------------------------------------------------------ newer_wins

def test_newer_wins_leaves_newer_rows_and_counts_them():
    mapping = compiled("newer_wins", captured_at="ts")
    later = T0 + timedelta(hours=1)
    target = seeded(item(1, "newer", ts=later), item(2, "older", ts=T0 - timedelta(hours=1)),
                    item(3, "newer", ts=later.replace(tzinfo=None).isoformat(" ")))
    result = apply(mapping, target, [event("u", 1, None, {"id": 1, "name": "x", "qty": "1"}),
                                     event("u", 2, None, {"id": 2, "name": "x", "qty": "1"}),
                                     event("d", 3, {"id": 3, "name": "x", "qty": "1"}, None)])
    data = target.tables[TGT.id]
    assert data[(1,)]["mc"] == "newer" and data[(2,)]["mc"] == "x" and data[(3,)]["mc"] == "newer"
    assert result.conflicts_skipped == 2 and target.dead == [] and result.applied == 1


# ------------------------------------------------------------------ plumbing

def test_values_compare_as_the_same_datum_across_drivers():
    assert same_value(Decimal("1.50"), 1.5) and same_value("1.50", Decimal("1.5")) and same_value(1, True)
    assert same_value("2026-01-01 00:00:00", T0) and same_value(T0.replace(tzinfo=None), T0)
    assert same_value('{"a": 1}', {"a": 1}) and same_value(None, None)
    assert not same_value("a", "b") and not same_value(None, "") and not same_value(1, 2)
    assert not same_value("x1", Decimal(1))


def test_the_rule_says_what_to_read():
    assert conflict_rule(compiled("source_wins")) is None
    assert conflict_rule(compiled("newer_wins", captured_at="ts")) == ConflictRule("newer_wins", "ts")
    rule = conflict_rule(compiled("reject"))
    assert rule.policy == "reject" and rule.columns_to_read(("id",)) == ["id", "mc", "qty"]
