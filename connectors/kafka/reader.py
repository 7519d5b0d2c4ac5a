"""Kafka as a source: a producing node's table topics turned back into change events.

No consumer group and no offset commits: the partitions are assigned
directly and the position (see :mod:`.position`) is stored in the target's
checkpoint, in the same transaction as the rows.

Messages of a tiersync batch are held until the batch is settled (see
:mod:`.session`): its commit marker has arrived in every partition it wrote
that this reader reads, and every partition read has passed all earlier
batches of the same producer (it showed a later batch, or it was read to its
end after the marker). The batch is then handed over whole, in sequence
order, so a source transaction is applied in one target transaction and a
child row never arrives before its parent from another topic. Messages of
attempts that never committed are dropped. A message that cannot be decoded
becomes a dead letter with the reason, and reading goes on.
"""

from __future__ import annotations

import base64
import json
import logging
from collections import deque
from dataclasses import dataclass, field
from itertools import repeat

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
    tp: object  # kafka TopicPartition
    name: str  # "topic:partition"
    table: CapturedTable
    offset: int  # next offset to read
    held: list = field(default_factory=list)  # (offset, producer, seq, attempt, record) of unsettled batches
    seen: dict[str, int] = field(default_factory=dict)  # producer → highest batch seq met in this partition
    passed: dict[str, int] = field(default_factory=dict)  # producer → seq this partition is known to be past

    def settled(self) -> int:
        return self.held[0][0] if self.held else self.offset


@dataclass
class _Marked:
    """A committed batch whose markers are arriving."""

    attempt: str
    partitions: set[str]  # the partitions it wrote that this reader reads
    marked: set[str] = field(default_factory=set)


def _batch(headers, name: str) -> tuple[str, int, str] | None:
    for key, value in headers or ():
        if key == name:
            producer, seq, attempt = value.decode().rsplit(":", 2)
            return producer, int(seq), attempt
    return None


class KafkaReader(Reader):
    def __init__(self, url: KafkaUrl, registry: SchemaRegistry, consumer_name: str, tables: list[CapturedTable],
                 start: str | None, source_node: str):
        from kafka import TopicPartition

        self.url, self.consumer_name = url, consumer_name
        self.codec = Codec(url.format, registry)
        position = KafkaPosition.deserialise(start) if start else KafkaPosition()
        self.done: dict[str, int] = dict(position.done)
        self.marked: dict[str, dict[int, _Marked]] = {}  # producer → seq → batch
        topics = {url.topic(source_node, t.info.id): t for t in tables}
        self.partitions: dict = {}
        self.by_name: dict[str, _Partition] = {}
        self._queue: deque = deque()
        try:
            ensure_topics(url, list(topics))  # the consumer may start before the producer has written
            self.client = consumer(url)
            for topic, table in topics.items():
                for number in sorted(self.client.partitions_for_topic(topic) or {0}):
                    tp = TopicPartition(topic, number)
                    name = f"{topic}:{number}"
                    part = _Partition(tp, name, table, position.offsets.get(name, 0))
                    self.partitions[tp] = self.by_name[name] = part
            self.client.assign(list(self.partitions))
            for tp, part in self.partitions.items():
                self.client.seek(tp, part.offset)
        except Exception as exc:  # noqa: BLE001 - translated
            raise translate(exc, "connecting the Kafka consumer") from None

    def position(self) -> str:
        return KafkaPosition({p.name: p.settled() for p in self.partitions.values()}, dict(self.done)).serialise()

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
                    self._queue.extend(zip(repeat(tp), records))
                if not self._queue:
                    polled_empty = True
                    if any(self.marked.values()):  # waiting batches may settle now that partitions are read out
                        self._settle_all(events, rejected, check_ends=True)
                    break
            tp, record = self._queue.popleft()
            self._take(self.partitions[tp], record, events, rejected)
        # an empty poll alone is not the end (a slow broker may not have answered yet): every partition must
        # also be read to its end offset; a batch still missing markers is read again next time
        caught_up = polled_empty and not self._queue and self._read_to_the_end()
        return ReadBatch(events, self.position(), caught_up=caught_up, rejected=rejected)

    def _read_to_the_end(self) -> bool:
        """Whether every assigned partition's next offset has reached its end offset (high watermark)."""
        try:
            ends = self.client.end_offsets(list(self.partitions))
            return all(self.client.position(tp) >= ends[tp] for tp in self.partitions)
        except Exception as exc:  # noqa: BLE001 - translated
            raise translate(exc, "reading end offsets") from None

    # ------------------------------------------------------------ one record

    def _take(self, part: _Partition, record, events: list, rejected: list) -> None:
        part.offset = record.offset + 1
        marker = _batch(record.headers, COMMIT_HEADER)
        if marker is not None:
            self._marker(part, marker, record, events, rejected)
            return
        batch = _batch(record.headers, BATCH_HEADER)
        if batch is None:  # not from a tiersync sink (or a compaction tombstone): take it as it is
            if record.value is not None:
                self._decode(part, record, events, rejected)
            return
        producer, seq, attempt = batch
        self._met(part, producer, seq)
        if seq <= self.done.get(producer, 0):
            return  # a batch applied before, read again
        part.held.append((record.offset, producer, seq, attempt, record))

    def _met(self, part: _Partition, producer: str, seq: int) -> None:
        if seq > part.seen.get(producer, 0):
            part.seen[producer] = seq

    def _marker(self, part: _Partition, marker, record, events: list, rejected: list) -> None:
        producer, seq, attempt = marker
        self._met(part, producer, seq)
        if seq <= self.done.get(producer, 0):
            return  # a marker sent again by a restarted producer, or read again
        batches = self.marked.setdefault(producer, {})
        entry = batches.get(seq)
        if entry is None or entry.attempt != attempt:
            try:
                written = {f"{t}:{p}" for t, p in json.loads(record.value)["partitions"]}
            except (ValueError, TypeError, KeyError):
                written = {part.name}
            entry = batches[seq] = _Marked(attempt, {n for n in written if n in self.by_name} | {part.name})
        entry.marked.add(part.name)
        self._settle(producer, events, rejected, check_ends=True)

    # ------------------------------------------------------------ settling batches

    def _settle_all(self, events: list, rejected: list, check_ends: bool) -> None:
        for producer in list(self.marked):
            self._settle(producer, events, rejected, check_ends)

    def _settle(self, producer: str, events: list, rejected: list, check_ends: bool) -> None:
        """Hand over the producer's marked batches, lowest first, while each is settled."""
        batches = self.marked.get(producer)
        while batches:
            seq = min(batches)
            entry = batches[seq]
            if entry.marked != entry.partitions or not self._all_past(producer, seq, check_ends):
                return
            del batches[seq]
            self._hand_over(producer, seq, entry.attempt, events, rejected)
            self.done[producer] = seq

    def _all_past(self, producer: str, seq: int, check_ends: bool) -> bool:
        """Every partition read holds nothing more of batches before ``seq``: it showed ``seq`` or later, or it
        has been read to its end since the marker of ``seq`` was read (markers of earlier batches come first)."""
        behind = [p for p in self.partitions.values()
                  if p.seen.get(producer, 0) < seq and p.passed.get(producer, 0) < seq]
        if not behind:
            return True
        if not check_ends:
            return False
        try:
            ends = self.client.end_offsets([p.tp for p in behind])
        except Exception as exc:  # noqa: BLE001 - translated
            raise translate(exc, "reading end offsets") from None
        for part in behind:
            if part.offset < ends[part.tp]:
                return False
            part.passed[producer] = seq
        return True

    def _hand_over(self, producer: str, seq: int, attempt: str, events: list, rejected: list) -> None:
        for part in self.partitions.values():
            if not part.held:
                continue
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

    def close(self) -> None:
        self.client.close()
