"""Conflict policies: what an incoming change does to a target row that someone else changed.

A mapping's ``conflict:`` names the policy. ``source_wins`` (the default) needs
nothing from the target. The other three read the target rows a group of
changes touches (locked, inside the apply transaction) and settle each change:

- ``newer_wins``: a change older than the row's ``metadata.captured_at``
  column is left out (counted as skipped; the newer row stays).
- ``higher_tier_wins``: a change from a lower tier than the tier recorded in
  the row's ``metadata.tier`` column is left out and written to the
  dead-letter table ("conflict: higher_tier_wins …"). A NULL tier means the
  row was written locally at the target and counts as this node's tier. A
  row is kept only when both tiers are known ranks and the row's is strictly
  higher; otherwise the change applies.
- ``reject``: an update or delete whose mapped before-image no longer matches
  the target row, or an insert whose key already holds different values, goes
  to the dead-letter table ("conflict: reject …"). A change whose source sent
  no before-image (PostgreSQL's default replica identity for updates) cannot
  be proven in conflict and applies. A replayed change (the row already holds
  the incoming values) is never a conflict, so apply stays idempotent.

The engine decides; the target session only reads rows
(:meth:`engine.seams.TargetSession.current_rows`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime, time, timezone
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .mapping import TargetChange

POLICIES = ("source_wins", "newer_wins", "higher_tier_wins", "reject")
TIER_RANK = {"county": 1, "city": 2, "province": 3, "national": 4}  # other tiers have no rank


class _NoRow:
    """The expected target state "no row with this key" (an insert, or an update moving a row to a new key)."""

    def __repr__(self) -> str:
        return "NO_ROW"


NO_ROW = _NoRow()


@dataclass(frozen=True)
class ConflictRule:
    """One target table's policy: ``column`` is its time or tier column; ``compared`` what ``reject`` compares."""

    policy: str
    column: str | None = None
    compared: tuple[str, ...] = ()

    def columns_to_read(self, key: tuple[str, ...]) -> list[str]:
        rest = [self.column] if self.column else list(self.compared)
        return list(dict.fromkeys(list(key) + [c for c in rest if c]))


@dataclass
class Settlement:
    """The changes of one group that apply, those refused (with the reason), and how many were left silently."""

    apply: list[TargetChange] = field(default_factory=list)
    refused: list[tuple[TargetChange, str]] = field(default_factory=list)
    skipped: int = 0


def settle(rule: ConflictRule, changes: list[TargetChange], current: dict[tuple, dict], node_tier: str) -> Settlement:
    """Settle ``changes`` against ``current`` (target rows by :func:`key_of`), following ``rule``."""
    out = Settlement()
    decide = {"newer_wins": _newer, "higher_tier_wins": _higher_tier, "reject": _reject}[rule.policy]
    for change in changes:
        verdict = decide(rule, change, current.get(key_of(change.key)), node_tier)
        if verdict is None:
            out.apply.append(change)
        elif verdict == "":
            out.skipped += 1
        else:
            out.refused.append((change, f"conflict: {rule.policy}: {verdict}"))
    return out


def key_of(values: tuple) -> tuple:
    """A key in a form that matches however the driver returned it (1 and Decimal('1'), str and date, text with
    or without the trailing blanks of a char(n) column)."""
    return tuple(_canonical(v) for v in values)


# ------------------------------------------------------------------ the policies (None: apply, "": skip, text: refuse)

def _newer(rule: ConflictRule, change: TargetChange, row: dict | None, node_tier: str) -> str | None:
    if row is None:
        return None
    incoming = change.event.captured_at if change.row is None else change.row.get(rule.column)
    held, incoming = _instant(row.get(rule.column)), _instant(incoming)
    if held is not None and incoming is not None and held > incoming:
        return ""
    return None


def _higher_tier(rule: ConflictRule, change: TargetChange, row: dict | None, node_tier: str) -> str | None:
    if row is None:
        return None
    recorded = _tier(row.get(rule.column))
    held = recorded or node_tier
    incoming = change.event.origin_tier
    held_rank, incoming_rank = TIER_RANK.get(held), TIER_RANK.get(incoming)
    if held_rank is None or incoming_rank is None or held_rank <= incoming_rank:
        return None
    written = "locally at this node" if not recorded else f"from tier {held}"
    return (f"the target row was last written {written}, above this change's origin {change.event.origin} "
            f"(tier {incoming}); the target row was kept")


def _tier(value: Any) -> str:
    """A tier as the target holds it: char(n) columns come back padded with blanks (PostgreSQL); '' for none."""
    return value.strip() if isinstance(value, str) else ""


def _reject(rule: ConflictRule, change: TargetChange, row: dict | None, node_tier: str) -> str | None:
    expected = change.expected
    if expected is None or change.kind not in ("upsert", "delete"):
        return None  # no before-image: a conflict cannot be proven
    if change.kind == "delete":
        if row is None or expected is NO_ROW:
            return None
        differing = _differing(row, expected)
        return f"the target row changed since the source's before-image: {differing}" if differing else None
    incoming = {c: v for c, v in change.row.items() if c in rule.compared}
    if row is not None and not _differing(row, incoming):
        return None  # the row already holds these values (a replay)
    if expected is NO_ROW:
        if row is None:
            return None
        return f"a row with this key already exists with different values: {_differing(row, incoming)}"
    if row is None:
        return "the target row no longer exists (deleted by someone else)"
    differing = _differing(row, expected)
    return f"the target row changed since the source's before-image: {differing}" if differing else None


def _differing(row: dict, expected: dict) -> str:
    """The columns where ``row`` differs from ``expected``, as "column (target x, expected y)"; '' if none."""
    parts = [f"{c} (target {row[c]!r}, expected {v!r})" for c, v in expected.items()
             if c in row and not same_value(row[c], v)]
    return ", ".join(parts)


# ------------------------------------------------------------------ comparing values as the databases return them

def same_value(a: Any, b: Any) -> bool:
    """Whether two values are the same datum, however each database's driver returned it."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, str) != isinstance(b, str):
        text, other = (a, b) if isinstance(a, str) else (b, a)
        return _canonical(_parse_like(text, other)) == _canonical(other)
    return _canonical(a) == _canonical(b)


def _parse_like(text: str, other: Any) -> Any:
    """``text`` read as the kind of ``other`` (SQLite returns numbers, dates and JSON stored as text)."""
    try:
        if isinstance(other, (bool, int, float, Decimal)):
            return Decimal(text)
        if isinstance(other, datetime):
            return datetime.fromisoformat(text.replace("Z", "+00:00"))
        if isinstance(other, date):
            return date.fromisoformat(text)
        if isinstance(other, time):
            return time.fromisoformat(text)
        if isinstance(other, (dict, list)):
            return json.loads(text, parse_float=Decimal)
    except (ValueError, InvalidOperation):
        pass
    return text


def _canonical(value: Any) -> Any:
    if isinstance(value, bool):
        return Decimal(int(value))
    if isinstance(value, (int, float, Decimal)):
        try:
            return Decimal(str(value)).normalize()
        except InvalidOperation:
            return str(value)
    if isinstance(value, datetime):
        return _instant(value).isoformat()
    if isinstance(value, (date, time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, default=str)
    if isinstance(value, str):
        return value.rstrip(" ")  # char(n) pads with blanks (PostgreSQL returns them; MySQL compares without)
    return str(value)


def _instant(value: Any) -> datetime | None:
    """A timestamp as an aware UTC datetime; naive ones (MySQL DATETIME, SQLite text) are taken as UTC."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
