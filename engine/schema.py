"""Table metadata as the engine sees it, read from a database's catalog by its connector."""

from __future__ import annotations

from dataclasses import dataclass, field

from .event import TableId


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    name: str
    type: str  # the database's own type name, e.g. "numeric(12,2)", "timestamp with time zone"
    nullable: bool = True
    generated: bool = False  # computed by the database; never written


@dataclass(frozen=True)
class TableInfo:
    """Columns in table order, the primary key, and the tables this one references."""

    id: TableId
    columns: tuple[ColumnInfo, ...]
    primary_key: tuple[str, ...] = ()
    parents: frozenset[TableId] = field(default_factory=frozenset)

    def column(self, name: str) -> ColumnInfo | None:
        for column in self.columns:
            if column.name == name:
                return column
        return None

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def writable_columns(self) -> list[str]:
        return [c.name for c in self.columns if not c.generated]


def dependency_order(tables: dict[TableId, TableInfo]) -> list[TableId]:
    """Tables sorted parents first (foreign-key order); cycles keep their input order."""
    order: list[TableId] = []
    state: dict[TableId, int] = {}

    def visit(table: TableId) -> None:
        if state.get(table) == 2:
            return
        if state.get(table) == 1:  # a cycle: leave it where it is
            return
        state[table] = 1
        for parent in sorted(tables[table].parents):
            if parent in tables and parent != table:
                visit(parent)
        state[table] = 2
        order.append(table)

    for table in tables:
        visit(table)
    return order
