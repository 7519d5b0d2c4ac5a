"""exchange-db: the sender writes each batch straight into the receiving node's inbox table.

The receiver's exchange database (the seeds' front exchange database) is the
only database of another agency a node ever connects to.
"""

from __future__ import annotations

from engine.config import redact_url
from engine.exchange import ExchangeStore, OutgoingBatch, TraceRow
from engine.registry import connector_for
from engine.transport import Transport


class ExchangeDbTransport(Transport):
    _store: ExchangeStore | None = None

    @property
    def store(self) -> ExchangeStore:
        if self._store is None:
            store = connector_for(self.link.inbox).exchange_store()
            try:
                store.ensure()
            except BaseException:
                store.close()
                raise
            self._store = store
        return self._store

    def send(self, batch: OutgoingBatch) -> bool:
        try:
            return self.store.receive(self.node, batch.seq, batch.batch_id, batch.payload, batch.events,
                                      self.link_name)
        except BaseException:
            self.close()  # reconnect on the next try
            raise

    def send_all(self, batches: list[OutgoingBatch]) -> list[bool]:
        try:  # all in one transaction of the receiver's exchange database
            return self.store.receive_all(self.node, [(b.seq, b.batch_id, b.payload, b.events) for b in batches],
                                          self.link_name)
        except BaseException:
            self.close()
            raise

    def trace(self, batch_ids: list[str]) -> list[TraceRow]:
        try:
            return self.store.trace(batch_ids)
        except BaseException:
            self.close()
            raise

    def describe(self) -> str:
        return f"exchange-db {redact_url(self.link.inbox or '')}"

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
