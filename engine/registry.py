"""Connector registry: URL scheme → connector class, imported only when used."""

from __future__ import annotations

import difflib
import importlib
from urllib.parse import urlsplit

from .errors import ConfigError, MissingDriver
from .seams import Connector

# scheme: (module, class, extra that installs its driver)
_CONNECTORS: dict[str, tuple[str, str, str | None]] = {
    "postgresql": ("connectors.postgres", "PostgresConnector", "postgres"),
    "postgres": ("connectors.postgres", "PostgresConnector", "postgres"),
    "sqlite": ("connectors.sqlite", "SqliteConnector", None),
    "mysql": ("connectors.mysql", "MysqlConnector", "mysql"),
    "mariadb": ("connectors.mysql", "MariadbConnector", "mysql"),
    "kafka": ("connectors.kafka", "KafkaConnector", "kafka"),
}


def known_schemes() -> list[str]:
    return sorted(_CONNECTORS)


def connector_for(url: str, state_schema: str = "tiersync") -> Connector:
    """Build the connector for ``url``; unknown schemes and missing drivers get a clear error."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in _CONNECTORS:
        close = difflib.get_close_matches(scheme, _CONNECTORS, n=1)
        hint = f" (did you mean {close[0]}://?)" if close else ""
        raise ConfigError([f"no connector for {scheme!r} URLs{hint}; known: {', '.join(known_schemes())}"])
    module_name, class_name, extra = _CONNECTORS[scheme]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and not exc.name.startswith("connectors"):
            raise MissingDriver(f"the {scheme} connector needs the Python package {exc.name!r}: "
                                f"pip install 'tiersync[{extra}]'") from None
        raise
    return getattr(module, class_name)(url, state_schema)
