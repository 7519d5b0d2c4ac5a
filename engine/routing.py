"""Routing between nodes: which links a change of an exchange table goes to, and never back where it was.

Up goes to the parent, down to children (all, or only the child whose region
code is a prefix of a column of the row), across to named peers. A region
predicate keeps rows outside a prefix at home. Whatever the rules say, a
change never goes to its origin node nor to a node already on its path.
"""

from __future__ import annotations

from .config import Config, RouteConfig


def region_prefix(code: str) -> str:
    """The part of a 6-digit region code that the codes below it share: 110000 → 11, 110100 → 1101."""
    while len(code) > 2 and code.endswith("00"):
        code = code[:-2]
    return code


class Router:
    """Destinations of a change, from the node's links and the exchange table's route."""

    def __init__(self, config: Config):
        exchange = config.exchange
        self.node = config.node.id
        self.own_prefix = region_prefix(config.node.region)
        self.links = dict(exchange.links) if exchange else {}
        self.routes: dict[str, RouteConfig] = dict(exchange.tables) if exchange else {}
        self.parent = next((n for n, link in self.links.items() if link.role == "parent"), None)
        self.children = {n: region_prefix(link.region or "") for n, link in self.links.items() if link.role == "child"}

    def destinations(self, table: str, row: dict | None, origin: str, path: tuple[str, ...]) -> list[str]:
        route = self.routes.get(table)
        if route is None or row is None:
            return []
        if route.region_column:
            prefix = route.region_prefix or self.own_prefix
            if not str(row.get(route.region_column) or "").startswith(prefix):
                return []
        wanted: list[str] = []
        if route.up and self.parent:
            wanted.append(self.parent)
        if route.down:
            value = str(row.get(route.down_match) or "") if route.down_match else None
            wanted += [child for child, prefix in self.children.items()
                       if value is None or value.startswith(prefix)]
        wanted += route.across
        seen = {origin, *path, self.node}
        return [n for n in dict.fromkeys(wanted) if n not in seen]
