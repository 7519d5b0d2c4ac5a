"""An in-memory target that behaves like a transactional database and can refuse rows on purpose."""

from __future__ import annotations

import copy

from engine.errors import RowRejected, TransientError
from engine.seams import TargetSession


class MemoryTarget(TargetSession):
    """Tables are dicts key → row; savepoints snapshot everything; ``refuse`` decides which rows fail."""

    def __init__(self, refuse=lambda table, row: False, fail_commit: int = 0):
        self.tables: dict = {}
        self.checkpoints: dict = {}
        self.dead: list = []
        self.origins: list = []
        self.refuse = refuse
        self.fail_commit = fail_commit
        self._txn = None
        self._savepoints: list = []

    def _state(self):
        return copy.deepcopy((self.tables, self.checkpoints, self.dead))

    def begin(self):
        self._txn = self._state()

    def commit(self):
        if self.fail_commit:
            self.fail_commit -= 1
            raise TransientError("connection lost during commit")
        self._txn = None

    def rollback(self):
        if self._txn is not None:
            self.tables, self.checkpoints, self.dead = self._txn
        self._txn = None
        self._savepoints.clear()

    def lock_pipeline(self, pipeline):
        pass

    def savepoint(self):
        self._savepoints.append(self._state())

    def rollback_to_savepoint(self):
        self.tables, self.checkpoints, self.dead = copy.deepcopy(self._savepoints[-1])

    def release_savepoint(self):
        self._savepoints.pop()

    def set_origin(self, origin):
        self.origins.append(origin)

    def upsert(self, table, columns, key, rows):
        data = self.tables.setdefault(table.id, {})
        for row in rows:
            record = dict(zip(columns, row))
            if self.refuse(table.id, record):
                raise RowRejected(f"refused {record}")
            ident = tuple(record[k] for k in key)
            data[ident] = {**data.get(ident, {}), **record}

    def insert(self, table, columns, rows):
        data = self.tables.setdefault(table.id, {})
        for row in rows:
            record = dict(zip(columns, row))
            if self.refuse(table.id, record):
                raise RowRejected(f"refused {record}")
            data[len(data)] = record

    def delete(self, table, key, keys):
        data = self.tables.setdefault(table.id, {})
        for ident in keys:
            data.pop(tuple(ident), None)

    def current_rows(self, table, key, columns, keys):
        data = self.tables.get(table.id, {})
        rows = [data.get(tuple(k)) for k in keys]
        return [tuple(row.get(c) for c in columns) for row in rows if row is not None]

    def truncate(self, table):
        self.tables[table.id] = {}

    def save_checkpoint(self, pipeline, position, changes):
        self.checkpoints[pipeline] = position

    def save_dead_letters(self, letters):
        self.dead.extend(letters)

    def save_snapshot_progress(self, pipeline, table, progress):
        pass
