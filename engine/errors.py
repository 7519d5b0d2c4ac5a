"""Error classes shared by the engine and the connectors.

Every error a connector raises past its boundary is one of these, so the
engine decides what to do from the class alone: retry a transient error with
backoff, stop at once on a terminal one, and send a rejected row to the
dead-letter table.
"""


class TiersyncError(Exception):
    """Base of every error tiersync raises on purpose."""


class ConfigError(TiersyncError):
    """The node configuration is invalid; ``problems`` lists every problem found."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class TransientError(TiersyncError):
    """A failure that may go away by itself (lost connection, server restart, lock timeout)."""


class TerminalError(TiersyncError):
    """A failure that needs a person: authentication, permissions, missing objects, bad mapping."""


class RowRejected(TiersyncError):
    """The target refused one row (constraint, type); the row goes to the dead-letter table."""


class MissingDriver(TerminalError):
    """A connector's driver package is not installed."""
