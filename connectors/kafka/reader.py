"""Kafka as a source: a producing node's table topics turned back into change events.

No consumer group and no offset commits: the partitions are assigned
directly and the position (per partition offsets and the last batch applied
per producer) is stored in the target's checkpoint, in the same transaction
as the rows. Messages of a tiersync batch are held until its commit marker
arrives (see :mod:`.session`); a message that cannot be decoded becomes a
dead letter with the reason, and reading goes on.
"""

from __future__ import annotations

import base64
import logging
from collections import deque
from dataclasses import dataclass, field

from engine.seams import CapturedTable, DeadLetter, ReadBatch, Reader

from .codec import BadMessage, Codec
from .connection import KafkaUrl, consumer, ensure_topics
from .errors import translate
from .position import KafkaPosition
from .schemas import SchemaRegistry
from .session import BATCH_HEADER, COMMIT_HEADER

log = logging.getLogger(__name__)


@dataclass
class _Partition:
    name: str  # "topic:partition"
    table: CapturedTable
    offset: int  # next offset to read
    applied: dict[str, int]
    held: list = field(default_factory=list)  # (offset, producer, seq, attempt, record) awaiting their marker

    def settled(self) -> int:
        return self.held[0][0] if self.held else self.offset


def _batch(headers, name: str) -> tuple[str, int, str] | None:
    for key, value in headers or ():
        if key == name:
            text = value.decode()
            producer, seq, attempt = text.rsplit(":", 2)
            return producer, int(seq), attempt
    return None


class KafkaReader(Reader):
    def __init__(self, url: KafkaUrl, registry: SchemaRegistry, consumer_name: str, tables: list[CapturedTable],
                 start: str | None, source_node: str):
        from kafka import TopicPartition

        self.url, self.consumer_name = url, consumer_name
        self.codec = Codec(url.format, registry)
        position = KafkaPosition.deserialise(start) if start else KafkaPosition()
        topics = {url.topic(source_node, t.info.id): t for t in tables}
        self.partitions: dict = {}
        self._queue: deque = deque()
        try:
            ensure_topics(url, list(topics))  # the consumer may start before the producer has written
            self.client = consumer(url)
            assignment = []
            for topic, table in topics.items():
                for number in sorted(self.client.partitions_for_topic(topic) or {0}):
                    tp = TopicPartition(topic, number)
                    name = f"{topic}:{number}"
                    offset, applied = position.partitions.get(name, (0, {}))
                    self.partitions[tp] = _Partition(name, table, offset, dict(applied))
                    assignment.append(tp)
            self.client.assign(assignment)
            for tp, part in self.partitions.items():
                self.client.seek(tp, part.offset)
        except Exception as exc:  # noqa: BLE001 - translated
            raise translate(exc, "connecting the Kafka consumer") from None

    def position(self) -> str:
        return KafkaPosition({p.name: (p.settled(), dict(p.applied)) for p in self.partitions.values()}).serialise()

    def read(self, max_events: int) -> ReadBatch:
        events, rejected = [], []
        polled_empty = False
        while len(events) + len(rejected) < max_events:
            if not self._queue:
                try:
                    got = self.client.poll(timeout_ms=0 if events else 200, max_records=max_events)
                except Exception as exc:  # noqa: BLE001 - translated
                    raise translate(exc, "reading from Kafka") from None
                for tp, records in got.items():
                    self._queue.extend((tp, r) for r in records)
                if not self._queue:
                    polled_empty = True
                    break
            tp, record = self._queue.popleft()
            self._take(self.partitions[tp], record, events, rejected)
        return ReadBatch(events, self.position(), caught_up=polled_empty and not self._queue, rejected=rejected)

    def _take(self, part: _Partition, record, events: list, rejected: list) -> None:
        part.offset = record.offset + 1
        marker = _batch(record.headers, COMMIT_HEADER)
        if marker is not None:
            self._commit(part, marker, events, rejected)
            return
        batch = _batch(record.headers, BATCH_HEADER)
        if batch is None:  # not from a tiersync sink (or a compaction tombstone): take it as it is
            if record.value is not None:
                self._decode(part, record, events, rejected)
            return
        producer, seq, attempt = batch
        if seq <= part.applied.get(producer, 0):
            return  # a batch applied before, read again
        part.held.append((record.offset, producer, seq, attempt, record))

    def _commit(self, part: _Partition, marker, events: list, rejected: list) -> None:
        producer, seq, attempt = marker
        if seq <= part.applied.get(producer, 0):
            return  # a marker sent again by a restarted producer
        keep = []
        for held in part.held:
            _, p, s, a, record = held
            if p == producer and s <= seq:
                if s == seq and a == attempt:
                    self._decode(part, record, events, rejected)
                # else: an attempt that never committed (its producer died and sent the batch again)
            else:
                keep.append(held)
        part.held = keep
        part.applied[producer] = seq

    def _decode(self, part: _Partition, record, events: list, rejected: list) -> None:
        table = part.table
        try:
            events.append(self.codec.decode(record.value, table.info.id, table.key))
        except BadMessage as exc:
            log.warning("%s offset %s: %s", part.name, record.offset, exc)
            raw = record.value or b""
            rejected.append(DeadLetter(
                self.consumer_name, str(table.info.id), "", "?", None,
                f"undecodable Kafka message at {part.name} offset {record.offset}: {exc}",
                {"topic": record.topic, "partition": record.partition, "offset": record.offset,
                 "key": (record.key or b"").decode("utf-8", "replace"),
                 "value_base64": base64.b64encode(raw[:65536]).decode(), "value_bytes": len(raw)},
                self.position()))

    def acknowledge(self, position: str) -> None:
        pass  # Kafka keeps messages by retention; the position lives in the target

    def end_offsets(self) -> dict[str, int]:
        ends = self.client.end_offsets(list(self.partitions))
        return {self.partitions[tp].name: end for tp, end in ends.items()}

    def close(self) -> None:
        self.client.close()
