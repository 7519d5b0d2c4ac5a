"""Net-change compaction: many changes to one key in a batch become its net change.

insert+update → upsert of the final row; insert+delete → nothing;
delete+insert → upsert; update+update → upsert of the merged row;
update+delete → delete. Appends (history rows) are never compacted. A truncate
drops what came before it for that table and runs first.
"""

from __future__ import annotations

from .event import Op
from .mapping import TargetChange


def compact(changes: list[TargetChange]) -> list[TargetChange]:
    """The net change per (table, key), in the order each key last changed; appends kept as they are."""
    net: dict[tuple, TargetChange] = {}
    born: set[tuple] = set()  # keys whose first change in this batch inserted them
    appends: list[TargetChange] = []
    truncates: list[TargetChange] = []  # applied before anything else of the batch
    for change in changes:
        if change.kind == "insert":
            appends.append(change)
            continue
        if change.kind == "truncate":  # everything before it in this batch is moot for that table
            for ident in [i for i in net if i[0] == change.table]:
                del net[ident]
            born = {i for i in born if i[0] != change.table}
            appends = [a for a in appends if a.table != change.table]
            truncates.append(change)
            continue
        ident = (change.table, change.key)
        previous = net.pop(ident, None)
        if previous is None:
            if change.kind == "upsert" and change.event.op in (Op.CREATE, Op.READ):
                born.add(ident)
            net[ident] = change
        elif change.kind == "delete":
            if ident in born:  # inserted and deleted inside the batch: nothing to do
                born.discard(ident)
            else:
                net[ident] = change
        elif previous.kind == "upsert":
            merged = dict(previous.row or {})
            merged.update(change.row or {})
            net[ident] = TargetChange("upsert", change.table, change.key, merged, change.event, change.key_columns)
        else:  # delete then upsert: the new row replaces whatever was there
            net[ident] = change
    return truncates + appends + list(net.values())
