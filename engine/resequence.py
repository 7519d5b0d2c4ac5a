"""Taking up a sender whose sequence started again (its outbox restored from an old backup).

A receiver keeps, per sender, the last batch sequence it applied, and takes a
batch numbered at or below it for a repeat: an old batch sent again after a
crash, harmless to drop. A sender whose exchange database was restored from an
old backup numbers its new batches from the old sequence again, so they look
like repeats and would be dropped. The remedy, with both nodes stopped:

1. on the receiver, :func:`accept_sequence` makes the sender's batch ``first``
   the next one it takes: every inbox pipeline (the relay too) and a kafka
   link's receiving end stand just before it, and what it holds of the sender
   from ``first`` on is dropped (those were the old batches, or new ones it
   ignored);
2. on the sender, :func:`resend_from` marks its outbox batches from ``first``
   on as not sent, so the new ones go (again).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .config import Config
from .errors import ConfigError
from .exchange import InboxReader
from .network import exchange_store, inbox_consumers, with_relay
from .registry import connector_for


@dataclass
class SequenceReset:
    sender: str
    first: int
    dropped: int = 0  # received batches dropped (seq >= first)
    pipelines: list[str] = field(default_factory=list)  # inbox pipelines now standing before ``first``
    kafka_receiver: bool = False


def _link(config: Config, name: str, what: str):
    links = config.exchange.links if config.exchange is not None else {}
    if name not in links:
        raise ConfigError([f"no link named {name!r}: {what} must be one of this node's links "
                           f"({', '.join(sorted(links)) or 'none'})"])
    return links[name]


def accept_sequence(config: Config, sender: str, first: int) -> SequenceReset:
    """Make ``sender``'s batch ``first`` the next this node takes (run it with the node stopped)."""
    link = _link(config, sender, "the sender")
    if first < 1:
        raise ConfigError([f"the first sequence to accept must be 1 or more (got {first})"])
    reset = SequenceReset(sender, first)
    for pipeline in with_relay(config).pipelines:
        if pipeline.source.capture != "inbox":
            continue
        db = config.databases[pipeline.target.database]
        target = connector_for(db.url, db.state_schema)
        saved = target.load_checkpoint(pipeline.name)
        position = InboxReader.parse(saved) if saved else {}
        position[sender] = [first - 1, 0]
        target.store_checkpoint(pipeline.name, InboxReader.serialise(position))
        reset.pipelines.append(pipeline.name)
    store = exchange_store(config)
    try:
        store.ensure()
        checkpoint = None
        if link.transport == "kafka":  # the receiving end's own position: offsets and the last batch stored
            name = f"kafka:{sender}"
            saved = store.load_checkpoint(name)
            state = json.loads(saved) if saved else {"offsets": {}, "done": 0}
            state["done"] = first - 1
            checkpoint = (name, json.dumps(state))
            reset.kafka_receiver = True
        reset.dropped = store.accept_sequence(sender, first, inbox_consumers(config), checkpoint)
    finally:
        store.close()
    return reset


def resend_from(config: Config, link_name: str, first: int) -> int:
    """Mark the link's outbox batches from ``first`` on as not sent (run it with the node stopped); how many."""
    _link(config, link_name, "the link")
    store = exchange_store(config)
    try:
        store.ensure()
        return store.resend_from(link_name, first)
    finally:
        store.close()
