"""The transport seam: how a batch in one node's outbox reaches the next node's inbox.

A transport's ``send`` returns only once the receiver has persisted the batch
(or already had it: batch ids make a repeated delivery harmless), so the
sender may then mark it delivered. ``trace`` asks the receiver what it knows
about batches (received, applied, forwarded onward and what happened there),
which is how an end-to-end acknowledgement travels back. Transports are
imported lazily by name, like connectors.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod

from .config import Config, LinkConfig
from .errors import TerminalError, TransientError
from .exchange import OutgoingBatch, TraceRow

GIVE_UP_AFTER = 6  # failures in a row after which a --once run stops instead of retrying


def retry_delay(what: str, failures: int, exc: TransientError, once: bool, longest: float = 30.0) -> float:
    """Seconds to wait before the next attempt after ``failures`` transient failures in a row (doubling from
    0.4 s up to ``longest``); a ``--once`` run gives up with a TerminalError after GIVE_UP_AFTER of them."""
    if once and failures >= GIVE_UP_AFTER:
        raise TerminalError(f"{what}: gave up after {failures} attempts: {exc}") from None
    return min(longest, 0.2 * 2 ** min(failures, 10))


# transport name: (module, class)
_TRANSPORTS = {
    "exchange-db": ("transports.exchange_db", "ExchangeDbTransport"),
    "http": ("transports.http", "HttpTransport"),
    "kafka": ("transports.kafka", "KafkaTransport"),
    "directory": ("transports.directory", "DirectoryTransport"),
}


class Transport(ABC):
    """Carries batches over one link; raises TransientError to be retried, TerminalError to stop.

    An ``offline`` transport does not deliver: the link sender calls ``export_pending`` instead of
    ``send_all``, and the batches stay undelivered until the receiver's receipt comes back.
    """

    offline = False

    def __init__(self, node: str, link_name: str, link: LinkConfig, config: Config):
        self.node, self.link_name, self.link, self.config = node, link_name, link, config

    @abstractmethod
    def send(self, batch: OutgoingBatch) -> bool:
        """Deliver ``batch``; True when the receiver stored it now, False when it already had it."""

    def send_all(self, batches: list[OutgoingBatch]) -> list[bool]:
        """Deliver consecutive batches of the link, oldest first (one round trip where the transport can)."""
        return [self.send(batch) for batch in batches]

    def export_pending(self, store) -> int:
        """Offline transports: write the batches not yet exported; how many."""
        raise NotImplementedError

    @abstractmethod
    def trace(self, batch_ids: list[str]) -> list[TraceRow]:
        """The receiver's trace of ``batch_ids`` and of what they became further on."""

    def describe(self) -> str:
        return f"{self.link.transport} to {self.link_name}"

    def close(self) -> None:  # noqa: B027 - optional
        pass


def transport_for(config: Config, link_name: str) -> Transport:
    link = config.exchange.links[link_name]
    module_name, class_name = _TRANSPORTS[link.transport]
    return getattr(importlib.import_module(module_name), class_name)(config.node.id, link_name, link, config)
