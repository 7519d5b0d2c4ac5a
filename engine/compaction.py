"""Net-change compaction: many changes to one key in a batch become its net change.

insert+update → upsert of the final row; insert+delete → nothing;
delete+insert → upsert; update+update → upsert of the merged row;
update+delete → delete. Appends (history rows) are never compacted. A truncate
drops what came before it for that table and runs first. An encoded row is
complete, so it replaces an earlier image; a partial image merged into an
encoded one decodes it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .encoded import EncodedRow, plain
from .event import CREATE, READ
from .mapping import TargetChange


def compact(changes: list[TargetChange]) -> list[TargetChange]:
    """The net change per (table, key), in the order each key last changed; appends kept as they are."""
    if len({(c.table, c.key) for c in changes if c.kind == "upsert" or c.kind == "delete"}) == len(changes):
        return list(changes)  # every change is to a key of its own: nothing to merge (a bulk load, most batches)
    return _merge(changes)


def _merge(changes: list[TargetChange]) -> list[TargetChange]:
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
            if change.kind == "upsert" and (change.event.op is CREATE or change.event.op is READ):
                born.add(ident)
            net[ident] = change
        elif change.kind == "delete":
            if ident in born:  # inserted and deleted inside the batch: nothing to do
                born.discard(ident)
            else:
                net[ident] = _presuming(change, previous.expected)
        elif previous.kind == "upsert":
            if type(change.row) is EncodedRow:  # a complete row: nothing of the previous one survives
                net[ident] = change
                continue
            merged = dict(plain(previous.row) or {})
            merged.update(change.row or {})
            net[ident] = TargetChange("upsert", change.table, change.key, merged, change.event, change.key_columns,
                                      previous.expected)
        else:  # delete then upsert: the new row replaces whatever was there
            net[ident] = _presuming(change, previous.expected)
    return truncates + appends + list(net.values())


def _presuming(change: TargetChange, expected) -> TargetChange:
    """``change`` as the net change of its key: it presumes what the key's first change in the batch presumed."""
    if change.expected is expected:
        return change
    return TargetChange(change.kind, change.table, change.key, change.row, change.event, change.key_columns, expected)


# ------------------------------------------------------------------ compacting a source's change log

@dataclass
class LogRow:
    """One change-log row as compaction sees it (images as their JSON text)."""

    id: int
    op: str  # c | u | d
    before: str | None
    origin: str | None
    key_changed: bool = False  # an update that moved the row to another key


@dataclass
class NetChange:
    keep: int  # the id of the row that stays (the key's last change), rewritten as op/before
    op: str
    before: str | None
    remove: list[int]


def net_log_change(rows: list[LogRow]) -> NetChange | None:
    """The key's changes (in id order) as one row: its last row, carrying the net effect; None: leave them.

    Safe for a consumer that has already read any prefix of them: the kept row is the last one and carries
    the final state on its own (a last delete stays a delete, even after an insert: deleting nothing is
    harmless). Changes of different origins are never merged (echo filtering needs each origin), nor chains
    in which the key itself changed.
    """
    if len(rows) < 2 or len({r.origin for r in rows}) > 1 or any(r.key_changed for r in rows):
        return None
    first, last = rows[0], rows[-1]
    if last.op == "d":
        return NetChange(last.id, "d", last.before, [r.id for r in rows[:-1]])
    if first.op == "c":
        return NetChange(last.id, "c", None, [r.id for r in rows[:-1]])
    return NetChange(last.id, "u", first.before, [r.id for r in rows[:-1]])

