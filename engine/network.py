"""A node in the exchange network: its relay pipeline, the senders of its links, its inbox consumers.

Every node with links relays: the built-in ``forward`` pipeline reads the
inbox and queues each change for the links its routes name (never for a node
on its path), in the same exchange-database transaction as its checkpoint.
So a middle tier applies what it receives with its own mapping (an ordinary
pipeline with an ``inbox`` source) and passes it on without capturing it a
second time. One :class:`LinkSender` per link moves the outbox over the link's
transport and pulls back the receiver's trace (the end-to-end acknowledgement).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta, timezone

from .config import Config, PipelineConfig, SourceConfig, TargetConfig
from .errors import TransientError
from .exchange import ExchangeStore, InboxReader, OutboxSink
from .plan import PipelinePlan
from .registry import connector_for
from .routing import Router

log = logging.getLogger(__name__)

FORWARD = "forward"
TRACE_PULL_SECONDS = 3.0  # how often a link sender fetches the receiver's trace of what it sent


def exchange_store(config: Config) -> ExchangeStore:
    db = config.databases[config.exchange.database]
    return connector_for(db.url, db.state_schema).exchange_store()


def prepare(config: Config) -> None:
    """Create the exchange tables (and, for SQLite, the file) before anything uses them."""
    store = exchange_store(config)
    try:
        store.ensure()
    finally:
        store.close()


def with_relay(config: Config) -> Config:
    """The configuration with the built-in forward pipeline added, when the node has links to relay on."""
    exchange = config.exchange
    if exchange is None or not exchange.links or not exchange.tables or \
            any(p.name == FORWARD for p in config.pipelines):
        return config
    forward = PipelineConfig(
        name=FORWARD, source=SourceConfig(database=exchange.database, capture="inbox", tables=list(exchange.tables)),
        target=TargetConfig(database=exchange.database, outbox=True), poll_interval=exchange.poll_interval)
    return config.model_copy(update={"pipelines": [*config.pipelines, forward]})


def inbox_consumers(config: Config) -> list[str]:
    return [p.name for p in with_relay(config).pipelines if p.source.capture == "inbox"]


def inbox_reader(config: Config, plan: PipelinePlan, start: str | None) -> InboxReader:
    store = plan.source.exchange_store()
    store.ensure()
    tables = {t.info.id.name: t.info.id for t in plan.captured}
    name = plan.config.name
    return InboxReader(store, name, tables, start, config.node.id, inbox_consumers(config),
                       records_apply=not plan.config.target.outbox)


def outbox_sink(config: Config, plan: PipelinePlan) -> OutboxSink:
    store = plan.target.exchange_store()
    store.ensure()
    sizes = {name: link.batch_size for name, link in config.exchange.links.items()}
    return OutboxSink(store, Router(config), config.node.id, plan.mappings, sizes,
                      from_capture=plan.config.source.capture != "inbox")


class LinkSender:
    """Moves one link's outbox over its transport, oldest first, and fetches the receiver's trace back."""

    def __init__(self, config: Config, link_name: str, stop: threading.Event, max_backoff: float = 30.0):
        self.config, self.link_name, self.stop = config, link_name, stop
        self.node = config.node.id
        self.poll = config.exchange.poll_interval
        self.max_backoff = max_backoff
        self.sent = 0
        self.last_error = ""

    def run(self, once: bool = False) -> None:
        from .transport import retry_delay, transport_for

        failures = 0
        store = transport = None
        last_trace = 0.0
        while not self.stop.is_set():
            try:
                if store is None:
                    store = exchange_store(self.config)
                    transport = transport_for(self.config, self.link_name)
                moved = self.step(store, transport)
                if time.monotonic() - last_trace > TRACE_PULL_SECONDS or (once and not moved):
                    self.pull_trace(store, transport)
                    last_trace = time.monotonic()
                failures = 0
                if not moved:
                    if once:
                        return
                    self.stop.wait(self.poll)
            except TransientError as exc:
                failures += 1
                self.last_error = str(exc)
                delay = retry_delay(f"link {self.link_name}", failures, exc, once, self.max_backoff)
                log.warning("link %s: %s — retrying in %.1fs", self.link_name, exc, delay)
                for part in (transport, store):
                    if part is not None:
                        part.close()
                store = transport = None
                self.stop.wait(delay)
        for part in (transport, store):
            if part is not None:
                part.close()

    def step(self, store: ExchangeStore, transport) -> int:
        if transport.offline:
            return transport.export_pending(store)
        batches = store.pending(self.link_name, 20)
        if batches:
            fresh = transport.send_all(batches)
            store.delivered(batches, self.node, [transport.describe() + ("" if f else " (already there)")
                                                 for f in fresh])
            self.sent += len(batches)
        return len(batches)

    def pull_trace(self, store: ExchangeStore, transport) -> None:
        recent = store.recent(self.link_name, 100)
        if recent:
            store.add_trace([r for r in transport.trace(recent) if r.node != self.node])


class Pruner:
    """Keeps the exchange database from growing without bound: every ``retention.interval`` seconds it deletes trace
    rows older than ``retention.trace_days`` and outbox batches acknowledged more than ``retention.outbox_days``
    ago. Batches still waiting in the outbox or the inbox keep their trace."""

    def __init__(self, config: Config, stop: threading.Event):
        self.config, self.stop = config, stop
        self.retention = config.exchange.retention

    def run(self, once: bool = False) -> None:
        while not self.stop.is_set():
            try:
                traces, batches = self.prune_now()
                if traces or batches:
                    log.info("pruned %d trace rows and %d acknowledged outbox batches", traces, batches)
            except TransientError as exc:
                log.warning("pruning the exchange database: %s — trying again later", exc)
            if once:
                return
            self.stop.wait(self.retention.interval)

    def prune_now(self, now: datetime | None = None) -> tuple[int, int]:
        """Prune once; (trace rows, outbox batches) deleted."""
        now = now or datetime.now(timezone.utc)

        def before(days: float) -> str:  # in the form the exchange tables store times (engine.exchange.now_text)
            return (now - timedelta(days=days)).isoformat(timespec="microseconds")
        store = exchange_store(self.config)
        try:
            return store.prune(before(self.retention.trace_days), before(self.retention.outbox_days))
        finally:
            store.close()


def exchange_workers(config: Config, stop: threading.Event, once: bool) -> tuple[list, list]:
    """(receivers, senders): (thread name, callable) for each link's receiving and sending end."""
    exchange = config.exchange
    receivers: list[tuple[str, object]] = []
    senders: list[tuple[str, object]] = []
    if exchange is None:
        return receivers, senders
    for name, link in exchange.links.items():
        if link.transport == "kafka":
            from transports.kafka import KafkaReceiver

            receiver = KafkaReceiver(config, name, stop)
            receivers.append((f"kafka-in-{name}", lambda r=receiver: r.run(once=once)))
        if link.transport == "directory" and link.watch:
            from transports.directory import DirectoryWatcher

            watcher = DirectoryWatcher(config, name, stop)
            receivers.append((f"directory-in-{name}", lambda w=watcher: w.run(once=once)))
        if (link.transport == "http" and not link.url) or link.transport == "bundle" or \
                (link.transport == "directory" and not link.directory):
            continue  # receive-only link, or moved by `tiersync bundle export`
        sender = LinkSender(config, name, stop)
        senders.append((f"link-{name}", lambda s=sender: s.run(once=once)))
    pruner = Pruner(config, stop)
    senders.append(("exchange-prune", lambda: pruner.run(once=once)))
    if exchange.listen and not once:
        from transports.http import serve

        receivers.append(("http-inbox", lambda: serve(config, stop)))
    return receivers, senders
