"""Kafka as a pipeline's target (table topics written by a node) and as its source (a node's topics read back).

``kafka://host:port[,host:port]/<topic-prefix>?format=json|avro&node=<id>``:
topics are ``<prefix>.<node>.<schema>.<table>``; as a target ``node`` is the
node running the pipeline (``node=`` overrides it), as a source ``node=``
names the producing node whose topics are read.
"""

from __future__ import annotations

import json

from engine.config import SourceConfig
from engine.errors import TerminalError, TransientError
from engine.event import TableId
from engine.schema import ColumnInfo, TableInfo
from engine.seams import (
    CapturedTable,
    Connector,
    Reader,
    SnapshotProgress,
    SourceProgress,
    TableScanner,
    TargetSession,
    TriggerCapture,
)

from .connection import KafkaUrl, admin, consumer, read_to_end
from .errors import translate
from .position import KafkaPosition
from .reader import KafkaReader
from .schemas import SchemaRegistry, table_of
from .session import KafkaSink, dead_letter_topic


class KafkaConnector(Connector):
    scheme = "kafka"

    def __init__(self, url: str, state_schema: str = "tiersync"):
        super().__init__(url, state_schema)
        self.kafka = KafkaUrl.parse(url)
        self.registry = SchemaRegistry(self.kafka)
        self._targets: dict[TableId, TableInfo] = {}
        self._checkpoints: dict[str, dict] = {}

    # ------------------------------------------------------------ catalog

    def check(self) -> None:
        try:
            client = admin(self.kafka)
            client.close()
        except Exception as exc:  # noqa: BLE001 - translated
            raise translate(exc, f"connecting to Kafka at {','.join(self.kafka.bootstrap)}") from None

    def qualify(self, name: str) -> TableId:
        table = TableId.parse(name)
        return table if table.schema else TableId(self.kafka.schema, table.name)

    def _source_node(self) -> str:
        if not self.kafka.node:
            raise TerminalError(f"{self.kafka.prefix or 'kafka'}: as a source, name the producing node whose topics "
                                f"are read: add ?node=<node id> to the URL")
        return self.kafka.node

    def describe(self, table: TableId) -> TableInfo | None:
        """A table as its producer registered it (columns, database types, key)."""
        if table in self._targets:
            return self._targets[table]
        topic = self.kafka.topic(self._source_node(), table)
        schema = self.registry.latest(f"{topic}-value")
        if schema is None:
            raise TransientError(f"no schema registered for topic {topic} yet: waiting for node "
                                 f"{self.kafka.node} to publish {table}")
        info = table_of(schema.schema)
        return TableInfo(table, info.columns, info.primary_key)

    def describe_target(self, table: TableId, source: TableInfo, mapping) -> TableInfo | None:
        """A topic takes whatever the mapping writes: its columns are derived, typed like the source's."""
        types = {p.target: source.column(p.source).type for p in mapping.plans.values() if p}
        columns = tuple(ColumnInfo(c, types.get(c, "")) for c in dict.fromkeys(mapping.target_columns()))
        info = TableInfo(table, columns, tuple(mapping.target_key))
        self._targets[table] = info
        return info

    def unique_keys(self, table: TableId) -> list[tuple[str, ...]]:
        info = self._targets.get(table)
        return [info.primary_key] if info and info.primary_key else []

    # ------------------------------------------------------------ source

    def trigger_capture(self, node_id: str, consumer: str | None = None) -> TriggerCapture:
        raise TerminalError("a Kafka topic has no triggers: use it as a pipeline's source or target")

    def reader(self, source: SourceConfig, consumer: str, tables: list[CapturedTable], start: str | None,
               node_id: str) -> Reader:
        return KafkaReader(self.kafka, self.registry, consumer, tables, start, self._source_node())

    def progress(self, source: SourceConfig, consumer_name: str, tables: list[TableId],
                 position: str | None) -> SourceProgress:
        from kafka import TopicPartition

        pos = KafkaPosition.deserialise(position) if position else KafkaPosition()
        client = consumer(self.kafka)
        try:
            tps = [TopicPartition(self.kafka.topic(self._source_node(), t), n) for t in tables
                   for n in sorted(client.partitions_for_topic(self.kafka.topic(self._source_node(), t)) or ())]
            ends = client.end_offsets(tps) if tps else {}
        except Exception as exc:  # noqa: BLE001 - translated
            raise translate(exc, "reading topic offsets") from None
        finally:
            client.close()
        pending = sum(max(0, end - pos.offsets.get(f"{tp.topic}:{tp.partition}", 0)) for tp, end in ends.items())
        return SourceProgress(pending, None, ",".join(f"{tp.topic}:{tp.partition}@{e}" for tp, e in ends.items()))

    # ------------------------------------------------------------ target

    def ensure_state(self) -> None:
        pass  # the checkpoint and dead-letter topics are created by the sink when it starts

    def target_session(self) -> TargetSession:
        return KafkaSink(self.kafka, self.registry, self)

    def applier(self, session: TargetSession, plan):
        return session.configure(plan)

    def table_scanner(self, table: CapturedTable) -> TableScanner:
        raise TerminalError("full loads from Kafka are not supported: bootstrap from a compacted topic "
                            "(URL option compact=true) by reading it from the start")

    def load_snapshot_progress(self, pipeline: str, table: str) -> SnapshotProgress | None:
        return None

    def _read_all(self, topic: str) -> list:
        """Every record of a small state topic, partition by partition."""
        from kafka import TopicPartition

        client = consumer(self.kafka, max_poll_records=5000)
        try:
            tps = [TopicPartition(topic, n) for n in sorted(client.partitions_for_topic(topic) or ())]
            return sorted(read_to_end(client, tps), key=lambda r: r.timestamp)
        except Exception as exc:  # noqa: BLE001 - translated
            raise translate(exc, f"reading {topic}") from None
        finally:
            client.close()

    def checkpoint_record(self, pipeline: str) -> dict | None:
        """The last checkpoint record a sink wrote for ``pipeline``."""
        if pipeline not in self._checkpoints:
            for record in self._read_all(self.kafka.checkpoint_topic):
                if record.value is not None:
                    self._checkpoints[record.key.decode()] = json.loads(record.value)
        return self._checkpoints.get(pipeline)

    def remember(self, pipeline: str, record: dict) -> None:
        self._checkpoints[pipeline] = record

    def load_checkpoint(self, pipeline: str) -> str | None:
        self._checkpoints.pop(pipeline, None)  # always the broker's word, never a cached one
        record = self.checkpoint_record(pipeline)
        return record["position"] if record else None

    def store_checkpoint(self, pipeline: str, position: str) -> None:
        from .connection import ensure_topics, producer

        record = dict(self.checkpoint_record(pipeline) or {"pipeline": pipeline, "seq": 0, "attempt": "manual"},
                      position=position, partitions=[])
        ensure_topics(self.kafka, [self.kafka.checkpoint_topic], compact=True)
        client = producer(self.kafka)
        try:
            client.send(self.kafka.checkpoint_topic, key=pipeline.encode(), value=json.dumps(record).encode())
            client.flush()
        finally:
            client.close()
        self._checkpoints[pipeline] = record

    def dead_letters(self, pipeline: str, limit: int) -> list[dict]:
        letters = [json.loads(r.value) for r in self._read_all(dead_letter_topic(self.kafka))
                   if r.value is not None and r.key == pipeline.encode()]
        return letters[-limit:]

    def dead_letter_count(self, pipeline: str) -> int:
        return len(self.dead_letters(pipeline, 1_000_000))

    def close(self) -> None:
        self.registry.close()
