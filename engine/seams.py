"""The seams between the engine and the connectors.

A connector implements :class:`Connector` for one kind of database. It hands
out a :class:`TriggerCapture` (DBA statements), a :class:`Reader` (ordered
change events with positions) and a :class:`TargetSession` (the primitive
operations the generic :class:`engine.apply.BatchApplier` composes into one
atomic batch with its checkpoint). All SQL text lives behind these seams.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .config import SourceConfig
from .errors import TerminalError
from .event import ChangeEvent, TableId
from .schema import TableInfo

if TYPE_CHECKING:
    from .exchange import ExchangeStore


@dataclass(frozen=True)
class CapturedTable:
    """A table a pipeline captures, with the key columns its change log records."""

    info: TableInfo
    key: tuple[str, ...]


@dataclass
class ReadBatch:
    """Events read from a source, and the position to checkpoint once they are applied."""

    events: list[ChangeEvent]
    position: str  # serialised Position
    more: bool = False  # the source transaction goes on in the next batch: apply, but do not commit yet
    ends_transaction: bool = False  # closes a transaction begun in earlier batches (may hold no events)
    caught_up: bool = True  # False: the source has more that it has not sent yet (keep reading for --once)
    rejected: list[DeadLetter] = field(default_factory=list)  # input the source could not decode (e.g. corrupt)


@dataclass
class CaptureStatus:
    table: TableId
    installed: bool
    pending: int
    oldest_pending: datetime | None


@dataclass
class SourceProgress:
    """What a source still holds for one consumer."""

    pending: int | None  # None where the source cannot count cheaply (a replication slot)
    oldest_pending: datetime | None
    head: str  # the source's newest position, serialised
    warning: str = ""


@dataclass
class DeadLetter:
    pipeline: str
    source_table: str
    target_table: str
    op: str
    key: Any
    error: str
    event: dict
    position: str


@dataclass
class SnapshotProgress:
    """How far a full load of one table has come; saved with each chunk it applies."""

    last_key: list | None = None
    rows: int = 0
    done: bool = False


@dataclass(frozen=True)
class CompareColumn:
    """A column reconcile compares: its name and type on one side, and the canonical kind both sides share."""

    name: str
    type: str
    kind: str  # one of engine.reconcile.KINDS


@dataclass(frozen=True)
class ChecksumSpec:
    """What one side of a comparison hashes: the key and compared columns in one order shared by both sides."""

    table: TableInfo
    key: tuple[CompareColumn, ...]
    columns: tuple[CompareColumn, ...]
    where: str | None = None


@dataclass(frozen=True)
class BucketSum:
    count: int
    total: int  # sum of the rows' 60-bit hashes (exact)


class TableChecksummer(ABC):
    """Checksums of a table's normalised rows, computed inside its database (see engine.reconcile).

    A row's key text and row text are the normalised values of ``spec.key`` and ``spec.columns`` joined as
    engine.reconcile.encode_values does (backslash and comma escaped, NULL as ``\\N``). ``rh`` is the first 60 bits
    of md5(key text || '|' || row text); ``kh``, the key's hash, is engine.reconcile.key_hash: the key's own value
    (low 60 bits) for a single integer key column, else the first 60 bits of md5(key text). A bucket at ``bits`` is
    ``kh & (2**bits - 1)``: buckets never follow key order, so collations cannot mislead them.
    """

    @abstractmethod
    def bucket_sums(self, bits: int, within: list[int] | None, within_bits: int) -> dict[int, BucketSum]:
        """Per bucket: row count and the exact sum of ``rh``; only buckets whose prefix at ``within_bits`` is in
        ``within`` (all when None)."""

    @abstractmethod
    def row_hashes(self, within: list[int], within_bits: int) -> dict[str, tuple[int, tuple]]:
        """Key text → (rh, the key's values) for the rows in the buckets ``within`` at ``within_bits``."""

    def close(self) -> None:  # noqa: B027 - optional
        pass


class TableScanner(ABC):
    """Reads a table's current rows in key order, in chunks, each in its own short statement."""

    @abstractmethod
    def count(self, where: str | None) -> int: ...

    @abstractmethod
    def chunk(self, after: tuple | None, limit: int, where: str | None) -> list[dict]:
        """Rows with a key above ``after`` (all when None), in key order, decoded like change-log images."""

    @abstractmethod
    def keys(self, after: tuple | None, limit: int) -> list[tuple]:
        """The next ``limit`` keys above ``after``, in key order."""

    @abstractmethod
    def existing(self, keys: list[tuple]) -> set[tuple]:
        """Which of ``keys`` the table holds."""

    def rows(self, keys: list[tuple]) -> list[dict]:
        """The rows with these keys (any order), decoded like change-log images."""
        raise NotImplementedError

    def close(self) -> None:  # noqa: B027 - optional
        pass


class Reader(ABC):
    """Yields a source's changes in order, restartable from a position.

    ``read`` never returns part of what it will later return again once the
    position it hands out has been acknowledged; ``acknowledge`` lets the
    source drop what is durable at the target, and is only called after that.
    """

    @abstractmethod
    def read(self, max_events: int) -> ReadBatch: ...

    @abstractmethod
    def acknowledge(self, position: str) -> None: ...

    def encode_rows(self, tables: set[TableId], format: str | None) -> None:  # noqa: B027 - optional
        """Hand out complete ``after`` images of ``tables`` as :class:`~engine.encoded.EncodedRow` in
        ``format`` from the next read on, where this reader can (None or an empty set: dicts only).
        A reader that cannot produce that format ignores the call."""

    def close(self) -> None:  # noqa: B027 - optional
        pass


def same_origin_prefix(rows: list, origin_index: int) -> list:
    """The leading rows that share the first row's origin: one target transaction carries one origin."""
    if not rows:
        return rows
    first = rows[0][origin_index]
    for i, row in enumerate(rows):
        if row[origin_index] != first:
            return rows[:i]
    return rows


@dataclass
class LogCompaction:
    """What compacting a change log did."""

    rows_before: int = 0
    rows_after: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    purged: int = 0  # rows every consumer had applied
    keys_compacted: int = 0  # keys whose several changes became one
    rows_merged: int = 0  # rows removed by merging


class TriggerCapture(ABC):
    """Trigger-based capture on one database: every statement can be shown before it runs."""

    def compact(self, tables: list[CapturedTable], older_than: float = 0.0) -> LogCompaction:
        """Purge what every consumer applied; merge each key's pending changes older than ``older_than`` seconds
        into its net change (engine.compaction.net_log_change)."""
        raise TerminalError("this database's change log cannot be compacted yet")

    @abstractmethod
    def install_statements(self, tables: list[CapturedTable]) -> list[str]: ...

    @abstractmethod
    def uninstall_statements(self, tables: list[TableId]) -> list[str]: ...

    @abstractmethod
    def execute(self, statements: list[str]) -> None: ...

    @abstractmethod
    def status(self, tables: list[TableId]) -> list[CaptureStatus]: ...


class TargetSession(ABC):
    """Primitive write operations inside one target transaction.

    Implementations translate driver exceptions: a row the database refuses
    raises :class:`~engine.errors.RowRejected`, a lost connection
    :class:`~engine.errors.TransientError`, anything needing a person
    :class:`~engine.errors.TerminalError`.

    A session whose ``encoded_format`` names a format also takes rows of that format
    (:class:`~engine.encoded.EncodedRow`) in ``upsert``, ``upsert_new`` and ``insert``, a whole list at a
    time (never mixed with tuples), and writes their lines as they are.
    """

    encoded_format: str | None = None

    @abstractmethod
    def begin(self) -> None: ...

    @abstractmethod
    def commit(self) -> None: ...

    @abstractmethod
    def rollback(self) -> None: ...

    @abstractmethod
    def lock_pipeline(self, pipeline: str) -> None:
        """Serialise this transaction with every other apply transaction of ``pipeline`` (e.g. a snapshot's)."""

    @abstractmethod
    def savepoint(self) -> None: ...

    @abstractmethod
    def rollback_to_savepoint(self) -> None: ...

    @abstractmethod
    def release_savepoint(self) -> None: ...

    @abstractmethod
    def set_origin(self, origin: str | None) -> None:
        """Mark what follows as applied on behalf of ``origin`` so capture on this database records it."""

    @abstractmethod
    def upsert(self, table: TableInfo, columns: list[str], key: list[str], rows: list[tuple]) -> None: ...

    def current_rows(self, table: TableInfo, key: list[str], columns: list[str], keys: list[tuple]) -> list[tuple]:
        """The rows of ``table`` whose ``key`` is one of ``keys``, as tuples of ``columns`` (which start with
        ``key``), locked until the transaction ends: what a conflict policy (engine.conflict) settles against."""
        from .errors import TerminalError
        raise TerminalError(f"conflict policies other than source_wins are not supported by this target "
                            f"({type(self).__name__})")

    def upsert_new(self, table: TableInfo, columns: list[str], key: list[str], rows: list[tuple]) -> None:
        """As :meth:`upsert`, for rows the source has just inserted (the target most likely lacks them):
        a session may try a cheaper plain insert first, as long as the outcome is the upsert's."""
        self.upsert(table, columns, key, rows)

    @abstractmethod
    def insert(self, table: TableInfo, columns: list[str], rows: list[tuple]) -> None: ...

    @abstractmethod
    def delete(self, table: TableInfo, key: list[str], keys: list[tuple]) -> None: ...

    @abstractmethod
    def truncate(self, table: TableInfo) -> None: ...

    @abstractmethod
    def save_checkpoint(self, pipeline: str, position: str, changes: int) -> None: ...

    @abstractmethod
    def save_dead_letters(self, letters: list[DeadLetter]) -> None: ...

    @abstractmethod
    def save_snapshot_progress(self, pipeline: str, table: str, progress: SnapshotProgress) -> None: ...


class Connector(ABC):
    """One database: its catalog, capture, reader and target session."""

    scheme: str = ""
    conflict_policies: tuple[str, ...] = ("source_wins",)  # what a mapping's conflict: may ask of this target

    def __init__(self, url: str, state_schema: str = "tiersync"):
        self.url = url
        self.state_schema = state_schema

    @abstractmethod
    def check(self) -> None:
        """Connect once; raise TerminalError or TransientError with what to do about it."""

    @abstractmethod
    def describe(self, table: TableId) -> TableInfo | None:
        """The table's metadata, or None when it does not exist."""

    @abstractmethod
    def qualify(self, name: str) -> TableId:
        """A configured table name as this database names it (default schema filled in)."""

    @abstractmethod
    def unique_keys(self, table: TableId) -> list[tuple[str, ...]]:
        """Column lists of the table's primary key and unique constraints (what an upsert can match on)."""

    @abstractmethod
    def trigger_capture(self, node_id: str, consumer: str | None = None) -> TriggerCapture:
        """Capture management; ``consumer`` (a pipeline name) is registered with the change log on install."""

    @abstractmethod
    def progress(self, source: SourceConfig, consumer: str, tables: list[TableId],
                 position: str | None) -> SourceProgress:
        """What the source still holds for a consumer at ``position``, without changing anything."""

    @abstractmethod
    def ensure_state(self) -> None:
        """Create the checkpoint and dead-letter tables if they are missing."""

    @abstractmethod
    def reader(self, source: SourceConfig, consumer: str, tables: list[CapturedTable], start: str | None,
               node_id: str) -> Reader:
        """The reader for ``source.capture`` (TerminalError when this database cannot capture that way)."""

    def capture_problems(self, source: SourceConfig, consumer: str, tables: list[CapturedTable]) -> list[str]:
        """What stops ``source.capture`` from working on this database, each with how to fix it."""
        return []

    @abstractmethod
    def target_session(self) -> TargetSession: ...

    def describe_target(self, table: TableId, source: TableInfo, mapping) -> TableInfo | None:
        """The target table a mapping writes; a database describes it, a message sink derives it from the mapping."""
        return self.describe(table)

    def applier(self, session: TargetSession, plan):
        """What applies batches through ``session``: the set-based :class:`engine.apply.BatchApplier` by default."""
        from .apply import BatchApplier

        return BatchApplier(session, plan.target_tables, plan.conflict_rules(), plan.target_tier)

    def write_statements(self, kind: str, table: TableId, columns: list[str], key: list[str]) -> list[str]:
        """The statements a target session runs for one group of changes (shown by `rules test`; never run)."""
        return []

    def exchange_store(self) -> ExchangeStore:
        """A connection to this database as a node's exchange database (inbox, outbox, trace)."""
        from .errors import TerminalError

        raise TerminalError(f"{self.scheme} databases cannot be a node's exchange database")

    @abstractmethod
    def table_scanner(self, table: CapturedTable) -> TableScanner: ...

    @abstractmethod
    def load_snapshot_progress(self, pipeline: str, table: str) -> SnapshotProgress | None: ...

    # ---- reconciliation (optional: a connector without it cannot be reconciled)

    def column_kind(self, type_name: str) -> str:
        """The canonical kind (engine.reconcile.KINDS) of a column of this database's type ``type_name``."""
        raise TerminalError(f"reconcile does not support {self.scheme} databases yet")

    def pushable(self, kind: str) -> bool:
        """Whether this database can compute the canonical text of ``kind`` (else it is compared in Python)."""
        return True

    def checksummer(self, spec: ChecksumSpec) -> TableChecksummer:
        raise TerminalError(f"reconcile does not support {self.scheme} databases yet")

    def fence_head(self, source: SourceConfig) -> str | None:
        """The source's newest committed position, for fencing a comparison (None: no change log to fence by)."""
        return None

    def save_reconcile_run(self, run: dict) -> None:
        """Record one reconcile run of a table in this (target) database's state (see engine.reconcile.RUN_FIELDS)."""
        raise TerminalError(f"reconcile does not support {self.scheme} databases yet")

    def reconcile_runs(self, pipeline: str, limit: int) -> list[dict]:
        """The latest reconcile runs of ``pipeline``, newest first."""
        raise TerminalError(f"reconcile does not support {self.scheme} databases yet")

    def unapplied(self, source: SourceConfig, consumer: str, tables: list[TableId], position: str | None,
                  head: str | None = None) -> list[tuple[TableId, tuple]] | None:
        """(table, source key) of changes committed at ``head`` (or now) that ``position`` has not applied.

        None: this source cannot tell.
        """
        return None

    @abstractmethod
    def load_checkpoint(self, pipeline: str) -> str | None: ...

    @abstractmethod
    def store_checkpoint(self, pipeline: str, position: str) -> None:
        """Set a checkpoint by hand (operator repair); normal progress goes through a session."""

    @abstractmethod
    def dead_letter_count(self, pipeline: str) -> int: ...

    @abstractmethod
    def dead_letters(self, pipeline: str, limit: int) -> list[dict]: ...

    def close(self) -> None:  # noqa: B027 - optional
        pass
