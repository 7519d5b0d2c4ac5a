"""kafka: each change is a message on topic ``<sender>.<receiver>.<table>`` keyed by its primary key.

The schema part of Debezium's ``<prefix>.<schema>.<table>`` names the
receiving node, so each link's routed stream is its own set of topics. Values
are Debezium-compatible envelopes (JSON, or Avro in the Confluent wire format
with schemas published on the ``_tiersync_schemas`` topic). A header carries the
batch id, sequence, index and count, so the receiving end
(:class:`KafkaReceiver`) puts whole batches back together and stores them in
its inbox with its consumer offsets in the same transaction — no Kafka offset
commits, no auto-commit: after a crash it resumes from offsets that never
skip part of a batch, and a batch produced twice is stored once.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from engine.batchcodec import batch_of_lines
from engine.config import Config
from engine.debezium import SchemaRegistry
from engine.errors import TerminalError, TransientError
from engine.exchange import OutgoingBatch, TraceRow
from engine.transport import Transport, retry_delay

from .kafka_avro import LinkReader
from .kafka_messages import (
    BatchMessages,
    Helper,
    MessageMaker,
    background_maker,
)

log = logging.getLogger(__name__)

SCHEMA_TOPIC = "_tiersync_schemas"
HEADER = "tiersync"  # on every message: "<batch seq> <index> <count> <batch id>"
CODEC_PACKAGES = {"lz4": "lz4", "zstd": "zstandard", "gzip": "gzip (Python's own)"}


def _kafka():
    try:
        import kafka
        import kafka.codec
        import kafka.errors
    except ModuleNotFoundError:
        raise TerminalError("the kafka transport needs kafka-python: pip install 'tiersync[kafka]'") from None
    return kafka


def _schema_registry(brokers: list[str]) -> SchemaRegistry:
    """Schemas by id as a receiving end reads them from the ``_tiersync_schemas`` topic (an embedded registry
    that travels with the data); the sending end publishes there (:meth:`KafkaTransport._publish`)."""
    kafka = _kafka()

    def fetch():
        from connectors.kafka.connection import read_to_end

        consumer = kafka.KafkaConsumer(bootstrap_servers=brokers, enable_auto_commit=False, group_id=None,
                                       auto_offset_reset="earliest")  # never skip to the end on a reset
        try:
            tps = [kafka.TopicPartition(SCHEMA_TOPIC, p) for p in consumer.partitions_for_topic(SCHEMA_TOPIC) or ()]
            return [(int(r.key), json.loads(r.value)) for r in read_to_end(consumer, tps, timeout_ms=1000)]
        finally:
            consumer.close()

    return SchemaRegistry(None, fetch)


def envelope_lines(brokers: list[str]) -> Callable[[list[bytes]], list[bytes | str]]:
    """The receiving end's conversion: message values → JSON envelope lines (Avro ones through the link's
    registry on the ``_tiersync_schemas`` topic, JSON ones as they came), or for a value that cannot be
    read, why (a str). Runs here, or in the receiver's :class:`Helper` for a large poll."""
    reader = LinkReader(_schema_registry(brokers))

    def convert(values: list[bytes]) -> list[bytes | str]:
        out: list[bytes | str] = []
        for value in values:
            try:
                out.append(reader.to_json(value) if value[:1] == b"\x00" else value)
            except (ValueError, KeyError, TypeError) as exc:
                out.append(str(exc) or type(exc).__name__)
        return out
    return convert


class KafkaTransport(Transport):
    """The sending end: one message per change, all of a batch acknowledged (acks=all) before it counts as sent."""

    _producer = None
    _background: Helper | None = None

    def _connect(self):
        kafka = _kafka()
        if self._producer is None:
            compression = None if self.link.compression == "none" else self.link.compression
            if compression is not None and not getattr(kafka.codec, f"has_{compression}")():
                raise TerminalError(f"link {self.link_name}: compression {compression} needs the "
                                    f"{CODEC_PACKAGES[compression]} package: pip install 'tiersync[kafka]'")
            try:
                self._producer = kafka.KafkaProducer(bootstrap_servers=self.link.brokers, acks="all", linger_ms=5,
                                                     enable_idempotence=True, batch_size=512 * 1024,
                                                     max_request_size=8 * 1024 * 1024, compression_type=compression)
                self._admin = kafka.KafkaAdminClient(bootstrap_servers=self.link.brokers)
            except kafka.errors.KafkaError as exc:
                raise TransientError(f"kafka {self.link.brokers}: {exc}") from None
            self._topics: set[str] = set()
            self._one_partition_topics: dict[str, bool] = {}
            self._maker = MessageMaker(self.node, self.link_name, self.link.format, self._keys())
        return self._producer

    def _keys(self) -> dict[str, list[str]]:
        return {table: route.key for table, route in self.config.exchange.tables.items()}

    def _ensure_topic(self, topic: str) -> None:
        if topic in self._topics:
            return
        kafka = _kafka()
        from kafka.admin import NewTopic

        configs = {"cleanup.policy": "compact"} if self.link.compact else {}
        try:
            self._admin.create_topics([NewTopic(topic, self.link.partitions, 1, topic_configs=configs)])
        except kafka.errors.TopicAlreadyExistsError:
            pass
        self._topics.add(topic)

    def send(self, batch: OutgoingBatch) -> bool:
        return self.send_all([batch])[0]

    def send_all(self, batches: list[OutgoingBatch]) -> list[bool]:
        """Produce every message of ``batches``, then wait once for all acknowledgements (acks=all). A large send
        has its messages made in the helper process while the earlier ones are produced. Any failure fails them
        all (sent again)."""
        kafka = _kafka()
        producer = self._connect()
        try:
            if self._background is None and 0 < self.link.helper_from <= sum(b.events for b in batches):
                self._background = background_maker(self.node, self.link_name, self.link.format, self._keys())
            if self._background is not None:
                made = [self._background.submit(b.payload) for b in batches]
                messages = (self._background.result(m, self.link.timeout) for m in made)
            else:
                messages = (self._maker.make(b.payload) for b in batches)
            futures = []
            for batch, batch_messages in zip(batches, messages):
                futures += self._produce(producer, batch, batch_messages)
            producer.flush(self.link.timeout)
            for future in futures:
                future.get(self.link.timeout)
        except kafka.errors.KafkaError as exc:
            self.close()
            raise TransientError(f"kafka {self.link.brokers}: {type(exc).__name__}: {exc}") from None
        except TransientError:
            self.close()
            raise
        return [True] * len(batches)

    def _publish(self, producer, sid: int, schema: dict) -> None:
        self._ensure_topic(SCHEMA_TOPIC)
        producer.send(SCHEMA_TOPIC, key=str(sid).encode(), value=json.dumps(schema).encode()).get(self.link.timeout)

    def _produce(self, producer, batch: OutgoingBatch, messages: BatchMessages) -> list:
        for sid, schema in messages.new_schemas:  # on the broker before any message names it
            self._publish(producer, sid, schema)
        partition = {}
        for topic in set(messages.topics):
            self._ensure_topic(topic)
            partition[topic] = 0 if self._one_partition(topic) else None
        # one header per message (kafka-python encodes each header in Python: four cost a quarter of the rate)
        before, after = f"{batch.seq} ".encode(), f" {len(messages.values)} {batch.batch_id}".encode()
        send = producer.send
        return [send(topic, key=key, value=value, headers=[(HEADER, before + str(index).encode() + after)],
                     partition=partition[topic])
                for index, (topic, key, value) in enumerate(zip(messages.topics, messages.keys, messages.values))]

    def _one_partition(self, topic: str) -> bool:
        """Whether ``topic`` has one partition, so its messages name it rather than have kafka-python hash each
        key in Python (murmur2: a third of the producer's time per message). A topic of several partitions keeps
        the default partitioner, the Java client's, so a key lands where any Kafka client would put it. Looked up
        once per connection: a topic given more partitions meanwhile gets its messages on partition 0 until the
        link connects again (their order holds either way: the receiving end stores batches by sequence)."""
        one = self._one_partition_topics.get(topic)
        if one is None:
            one = self._one_partition_topics[topic] = self._producer.partitions_for(topic) == {0}
        return one

    def trace(self, batch_ids: list[str]) -> list[TraceRow]:
        return []  # Kafka carries no answers back: a kafka link's trace ends at "sent"

    def describe(self) -> str:
        return f"kafka {','.join(self.link.brokers)}"

    def close(self) -> None:
        if self._background is not None:  # it may remember schemas as published that never were
            self._background.close()
            self._background = None
        if self._producer is not None:
            for part in (self._producer, self._admin):
                try:
                    part.close(timeout=5) if part is self._producer else part.close()
                except Exception:  # noqa: BLE001 - closing a broken client
                    pass
            self._producer = None


class KafkaReceiver:
    """The receiving end of one kafka link: whole batches into the inbox, offsets in the same transaction."""

    def __init__(self, config: Config, link_name: str, stop: threading.Event):
        self.config, self.link_name, self.stop = config, link_name, stop
        self.link = config.exchange.links[link_name]
        self.node = config.node.id
        self.prefix = f"{link_name}.{self.node}."
        self.checkpoint = f"kafka:{link_name}"
        self.received = 0
        self._helper: Helper | None = None  # reads large polls while the next one is polled

    def run(self, once: bool = False) -> None:
        from engine.network import exchange_store

        failures = 0
        while not self.stop.is_set():
            store = consumer = None
            try:
                store = exchange_store(self.config)
                store.ensure()
                consumer = self._consumer()
                self._loop(store, consumer, once)
                return
            except TransientError as exc:
                failures += 1
                delay = retry_delay(f"kafka link {self.link_name}", failures, exc, once)
                log.warning("kafka link %s: %s — retrying in %.1fs", self.link_name, exc, delay)
                self.stop.wait(delay)
            finally:
                for part in (consumer, store):
                    if part is not None:
                        part.close()

    def _consumer(self):
        kafka = _kafka()
        try:
            return kafka.KafkaConsumer(bootstrap_servers=self.link.brokers, enable_auto_commit=False, group_id=None,
                                       auto_offset_reset="earliest", max_partition_fetch_bytes=8 * 1024 * 1024)
        except kafka.errors.KafkaError as exc:
            raise TransientError(f"kafka {self.link.brokers}: {exc}") from None

    def _loop(self, store, consumer, once: bool) -> None:
        """Poll, read, store: each poll's records go through :meth:`_stage` (headers, and the values read as JSON
        envelopes: a large poll's in the helper process while the next poll runs), then through :meth:`_store`
        strictly in poll order, each with the positions the consumer had right after that poll."""
        kafka = _kafka()
        saved = store.load_checkpoint(self.checkpoint)
        state = json.loads(saved) if saved else {"offsets": {}, "done": 0}
        self._offsets: dict[str, int] = state["offsets"]
        self._done: int = state["done"]  # every batch up to this sequence is in the inbox
        self._written: set[int] = set()
        self._pending: dict[int, dict[str, Any]] = {}
        assigned: list = []
        convert = envelope_lines(self.link.brokers)
        staged: deque = deque()  # (records taken with their headers, their lines or a future, positions, polled)
        last_refresh = 0.0
        idle = 0
        try:
            while not self.stop.is_set():
                try:
                    if time.monotonic() - last_refresh > 2.0:
                        assigned = self._assign(consumer, assigned, self._offsets)
                        last_refresh = time.monotonic()
                    records = consumer.poll(200, max_records=20000) if assigned else {}
                    positions = {tp: consumer.position(tp) for tp in assigned}
                except kafka.errors.UnsupportedCodecError as exc:  # waiting would not help
                    raise TerminalError(f"kafka link {self.link_name}: the sender compresses with a codec this node "
                                        f"cannot read ({exc}): pip install 'tiersync[kafka]'") from None
                except kafka.errors.KafkaError as exc:
                    raise TransientError(f"kafka {self.link.brokers}: {exc}") from None
                if not assigned:
                    if once:
                        return
                    self.stop.wait(0.5)
                    continue
                staged.append((*self._stage(records, convert), positions, bool(records)))
                # store what is read; with a poll in the helper, poll again while it reads (at most two ahead)
                while staged and (len(staged) > 2 or not records or not isinstance(staged[0][1], Future)):
                    taken, lines, at, polled = staged.popleft()
                    if isinstance(lines, Future):
                        lines = self._helper.result(lines, self.link.timeout)
                    if polled:
                        self._store(store, taken, lines, at, assigned)
                if records or staged:
                    idle = 0
                else:
                    idle += 1
                    if once and idle >= 5 and not self._pending:
                        return
        finally:
            if self._helper is not None:
                self._helper.close()
                self._helper = None

    def _stage(self, records: dict, convert) -> tuple[list, Any]:
        """The records of a poll that belong to batches not stored yet, with their headers, and their values as
        JSON envelope lines (or a helper's future of them)."""
        taken = []
        for tp, batch in records.items():
            for record in batch:
                found = self._headers(record, tp)
                if found is not None and not (found[0] <= self._done or found[0] in self._written):
                    taken.append((tp, record, found))
        values = [record.value for _, record, _ in taken]
        if 0 < self.link.helper_from <= sum(1 for v in values if v[:1] == b"\x00"):
            if self._helper is None:
                self._helper = Helper("reading kafka messages", envelope_lines, list(self.link.brokers))
            return taken, self._helper.submit(values)
        return taken, convert(values)

    def _headers(self, record, tp) -> tuple[int, int, int, str] | None:
        """(batch seq, index in the batch, the batch's message count, batch id) from the ``tiersync`` header, or
        from the four headers earlier versions wrote (``tiersync-seq`` …); None for a message not from tiersync."""
        try:
            headers = {k: v.decode() for k, v in (record.headers or [])}
            if HEADER in headers:
                seq, index, count, batch_id = headers[HEADER].split(" ", 3)
                return int(seq), int(index), int(count), batch_id
            seq, index, count = (int(headers[h]) for h in ("tiersync-seq", "tiersync-index", "tiersync-count"))
            return seq, index, count, headers["tiersync-batch"]
        except (KeyError, ValueError, UnicodeDecodeError):
            log.error("kafka link %s: %s offset %s has no tiersync batch headers; skipped (not from tiersync)",
                      self.link_name, tp, record.offset)
            return None

    def _store(self, store, taken: list, lines: list, positions: dict, assigned: list) -> None:
        """Add a poll's changes to their batches; store the batches now whole in the inbox, with the offsets
        (before the first record of a batch still incomplete, else ``positions``) in the same transaction."""
        pending, written = self._pending, self._written
        for (tp, record, (seq, index, count, batch_id)), line in zip(taken, lines):
            if seq <= self._done or seq in written:
                continue  # stored meanwhile: produced again after a sender crash
            if isinstance(line, str):  # the inbox holds JSON envelopes (the inbox reader checks JSON ones)
                raise TerminalError(f"kafka link {self.link_name}: {tp.topic}[{tp.partition}] offset "
                                    f"{record.offset} cannot be read: {line}")
            part = pending.setdefault(seq, {"id": batch_id, "count": count, "events": {}, "spots": []})
            part["events"][index] = line
            part["spots"].append((tp, record.offset))
        rows = []
        for seq in sorted(seq for seq, p in pending.items() if len(p["events"]) == p["count"]):
            part = pending.pop(seq)
            lines_of_batch = [part["events"][i] for i in range(part["count"])]
            rows.append((seq, part["id"], batch_of_lines(lines_of_batch), len(lines_of_batch)))
            written.add(seq)
        while self._done + 1 in written:
            self._done += 1
            written.discard(self._done)
        for tp in assigned:
            if tp in positions:
                spots = [o for p in pending.values() for (t, o) in p["spots"] if t == tp]
                self._offsets[f"{tp.topic}|{tp.partition}"] = min(spots) if spots else positions[tp]
        # the offsets move past what was polled, also when all of it had been stored before
        store.receive_many(self.link_name, rows, self.node,
                           (self.checkpoint, json.dumps({"offsets": self._offsets, "done": self._done})))
        self.received += len(rows)

    def _assign(self, consumer, assigned: list, offsets: dict[str, int]) -> list:
        kafka = _kafka()
        topics = sorted(t for t in consumer.topics() if t.startswith(self.prefix))
        wanted = [kafka.TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        if wanted == assigned:
            return assigned
        consumer.assign(wanted)
        for tp in wanted:
            offset = offsets.get(f"{tp.topic}|{tp.partition}")
            if offset is None:
                consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, offset)
        return wanted
