"""Kafka as a target: each batch becomes messages, a checkpoint record, then commit markers.

Why not Kafka transactions: the tansu broker used by the tests accepts
transactional producers but still hands aborted records to ``read_committed``
consumers, and real clusters differ in how they are set up; so exactly-once
is built from plain idempotent produce requests that work on any broker:

1. every message of batch ``seq`` carries the header
   ``tiersync.batch = <node>/<pipeline>:<seq>:<attempt>`` (``attempt`` is
   new each time a sink starts);
2. after they are all acknowledged (acks=all), the checkpoint record
   (source position, seq, attempt, partitions written) goes to the compacted
   ``<prefix>.tiersync.checkpoints`` topic: this is the commit point;
3. then a commit marker with the same header value goes to every partition
   the batch wrote; on start, a sink sends the markers of its last
   checkpoint again (in case it died between 2 and 3).

A consumer holds a partition's batch messages until that batch's marker
arrives, applies the ones of the marked attempt, and drops those of other
attempts (a sink that died before step 2 and re-sent the batch). The source
is acknowledged only after step 2, and re-read from the checkpoint after a
crash.
"""

from __future__ import annotations

import json
import logging
import uuid
import zlib
from datetime import datetime, timezone
from functools import lru_cache

from engine.apply import ApplyResult, Batch, event_to_json
from engine.errors import TerminalError, TransientError
from engine.event import Op, TableId
from engine.jsontext import dumps_exact, json_default
from engine.schema import TableInfo
from engine.seams import DeadLetter, SnapshotProgress, TargetSession

from .codec import Codec
from .connection import KafkaUrl, ensure_topics, producer
from .errors import translate
from .schemas import SchemaRegistry, evolved, table_schema

log = logging.getLogger(__name__)

BATCH_HEADER = "tiersync.batch"
COMMIT_HEADER = "tiersync.commit"


def dead_letter_topic(url: KafkaUrl) -> str:
    return url.checkpoint_topic.rsplit(".", 1)[0] + ".dead-letters"


_KEY_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=json_default)


@lru_cache(maxsize=4096)
def _key_prefix(column: str) -> str:
    return "{" + _KEY_ENCODER.encode(column) + ":"


def message_key(columns: tuple[str, ...], key: tuple) -> bytes:
    """The key as a JSON object (Debezium's key without its schema); equal keys give equal bytes."""
    if len(key) == 1 and type(key[0]) is int:  # the common key, written as the encoder below writes it
        return f"{_key_prefix(columns[0])}{key[0]}}}".encode()
    try:
        return _KEY_ENCODER.encode(dict(zip(columns, key))).encode()
    except TypeError:
        return dumps_exact(dict(zip(columns, key))).encode()


def partition_of(key: bytes | None, partitions: int) -> int:
    """A key's partition: the same key always lands in the same partition, so its changes stay in order."""
    return zlib.crc32(key) % partitions if key is not None and partitions > 1 else 0


class KafkaSink(TargetSession):
    """Writes batches to table topics; is both the target session and the pipeline's applier."""

    def __init__(self, url: KafkaUrl, registry: SchemaRegistry, checkpoints):
        self.url = url
        self.registry = registry
        self.codec = Codec(url.format, registry)
        self.checkpoints = checkpoints  # the connector: reads the last checkpoint record
        self.node = ""
        self.tables: dict[TableId, TableInfo] = {}
        self.mappings = {}
        self.producer = None
        self.attempt = uuid.uuid4().hex[:12]
        self._schemas: dict[TableId, object] = {}
        self._topics: dict[TableId, str] = {}
        self._table_topics: set[str] = set()
        self._partitions: dict[str, int] = {}
        self._seq: dict[str, int] = {}  # pipeline → last committed batch seq
        self._open: tuple[str, int] | None = None  # (pipeline, seq) of the batch being written
        self._sent: list = []
        self._written: set[tuple[str, int]] = set()  # table partitions the open batch wrote
        self._position = ""
        self._changes = 0

    # ------------------------------------------------------------ set-up

    def configure(self, plan) -> KafkaSink:
        self.node = self.url.node or plan.node_id
        self.tables = dict(plan.target_tables)
        self.mappings = {m.target: m for m in plan.mappings.values()}
        self._topics = {t: self.url.topic(self.node, t) for t in self.tables}
        self._table_topics = set(self._topics.values())
        try:
            ensure_topics(self.url, list(self._topics.values()))
            ensure_topics(self.url, [self.url.checkpoint_topic], compact=True)
            ensure_topics(self.url, [dead_letter_topic(self.url)], compact=False)
            self.producer = producer(self.url)
            self._partitions = {t: len(self.producer.partitions_for(t)) for t in self._table_topics}
        except TransientError:
            raise
        except Exception as exc:  # noqa: BLE001 - translated
            raise translate(exc, "connecting the Kafka producer") from None
        for table, info in self.tables.items():
            self._schemas[table] = self.registry.register(f"{self._topics[table]}-value",
                                                          table_schema(self._topics[table], info))
        self._repair(plan.config.name)
        return self

    def _producer_id(self, pipeline: str) -> str:
        return f"{self.node}/{pipeline}"

    def _repair(self, pipeline: str) -> None:
        """Send the markers of the last checkpoint again: the previous sink may have died before it did."""
        doc = self.checkpoints.checkpoint_record(pipeline)
        self._seq[pipeline] = doc["seq"] if doc else 0
        if doc and doc.get("partitions"):
            self._mark(pipeline, doc["seq"], doc["attempt"], [tuple(p) for p in doc["partitions"]])

    # ------------------------------------------------------------ the applier

    def apply(self, batch: Batch) -> ApplyResult:
        self.begin()
        try:
            result = self.apply_open(batch)
            self.save_checkpoint(batch.pipeline, batch.position, batch.events)
            self.commit()
        except BaseException:
            self.rollback()
            raise
        return result

    def apply_open(self, batch: Batch) -> ApplyResult:
        pipeline = batch.pipeline
        if self._open is None:
            self._open = (pipeline, self._seq.get(pipeline, 0) + 1)
        header = [(BATCH_HEADER, self._batch_id(pipeline, self._open[1], self.attempt).encode())]
        result = ApplyResult(applied=0)
        letters = list(batch.rejected)
        send = self.producer.send
        path_tail = self.node
        for change in batch.changes:
            event = change.event
            path = list(event.path)
            if not path or path[-1] != path_tail:
                path.append(path_tail)
            try:
                topic, key, value = self._message(change, path)
            except (TypeError, ValueError, ArithmeticError, KeyError) as exc:
                letters.append(DeadLetter(pipeline, str(event.table), str(change.table), event.op.value,
                                          list(change.key), f"cannot encode for Kafka: {exc}",
                                          event_to_json(event, target_row=change.row), batch.position))
                continue
            partition = partition_of(key, self._partitions[topic])
            self._written.add((topic, partition))
            self._sent.append(send(topic, key=key, value=value, headers=header, partition=partition))
            if change.kind == "delete" and self.url.compact:  # tombstone: compaction drops the key
                self._sent.append(send(topic, key=key, value=None, partition=partition))
            result.applied += 1
        if letters:
            self.save_dead_letters(letters)
            result.dead_letters = len(letters)
        return result

    def _message(self, change, path: list[str]) -> tuple[str, bytes | None, bytes]:
        event = change.event
        table = change.table
        mapping = self.mappings.get(table)
        kind = change.kind
        if kind == "truncate":
            op, before, after = Op.TRUNCATE.value, None, None
        elif kind == "delete":
            op, after = Op.DELETE.value, None
            before = mapping.map_row(event.before, event) if (mapping and event.before is not None) else \
                dict(zip(change.key_columns, change.key))
        else:
            op, after = (event.op.value if event.op is not Op.DELETE else Op.CREATE.value), change.row
            before = mapping.map_row(event.before, event) if (mapping and event.before is not None
                                                              and kind == "upsert") else None
        schema = self._schemas[table]
        key = message_key(change.key_columns, change.key) if change.key_columns else None
        if self.url.format == "avro":
            extra = [c for image in (before, after) if image for c in image if c not in schema.columns]
            if extra:  # a column the schema does not have yet: a new, compatible version
                schema = self._evolve(table, new_columns=list(dict.fromkeys(extra)))
            try:
                return self._topics[table], key, self.codec.encode(op, before, after, event, self.node, path, schema)
            except (ValueError, TypeError, OverflowError):
                misfits = schema.misfits(before, after)
                if not misfits:
                    raise
                schema = self._evolve(table, generic=list(dict.fromkeys(misfits)))  # those columns take any kind
        return self._topics[table], key, self.codec.encode(op, before, after, event, self.node, path, schema)

    def _evolve(self, table: TableId, new_columns=(), generic=()):
        topic = self._topics[table]
        schema = self.registry.register(f"{topic}-value", evolved(self._schemas[table].schema, topic,
                                                                  new_columns, generic))
        self._schemas[table] = schema
        log.info("topic %s: schema evolved to id %s (new columns %s, any-kind columns %s)", topic, schema.id,
                 list(new_columns), list(generic))
        return schema

    def _batch_id(self, pipeline: str, seq: int, attempt: str) -> str:
        return f"{self._producer_id(pipeline)}:{seq}:{attempt}"

    # ------------------------------------------------------------ the commit protocol

    def begin(self) -> None:
        if self._open is None:
            self._sent, self._written = [], set()

    def lock_pipeline(self, pipeline: str) -> None:
        pass  # one sink per pipeline; the checkpoint record orders its batches

    def save_checkpoint(self, pipeline: str, position: str, changes: int) -> None:
        if self._open is None:
            self._open = (pipeline, self._seq.get(pipeline, 0) + 1)
        self._position, self._changes = position, changes

    def commit(self) -> None:
        if self._open is None:
            return
        pipeline, seq = self._open
        try:
            self._settle(self._sent)
            partitions = sorted(self._written)
            record = {"pipeline": pipeline, "producer": self._producer_id(pipeline), "position": self._position,
                      "seq": seq, "attempt": self.attempt, "partitions": partitions, "changes": self._changes,
                      "at": datetime.now(timezone.utc).isoformat()}
            self._settle([self.producer.send(self.url.checkpoint_topic, key=pipeline.encode(),
                                             value=json.dumps(record).encode())])
            self._mark(pipeline, seq, self.attempt, partitions)
        finally:
            self._open, self._sent, self._written = None, [], set()
        self._seq[pipeline] = seq
        self.checkpoints.remember(pipeline, record)

    def _mark(self, pipeline: str, seq: int, attempt: str, partitions) -> None:
        batch = self._batch_id(pipeline, seq, attempt).encode()
        key = b"\x00" + batch[: batch.rindex(b":")]  # one marker per batch: compaction keeps every one
        value = json.dumps({"partitions": [list(p) for p in partitions]}).encode()  # where the batch is
        self._settle([self.producer.send(topic, key=key, value=value, partition=partition,
                                         headers=[(COMMIT_HEADER, batch)]) for topic, partition in partitions])

    def _settle(self, futures: list) -> None:
        """Wait until every send is acknowledged; any failure fails the batch (it is sent again)."""
        try:
            self.producer.flush()
        except Exception as exc:  # noqa: BLE001 - translated
            raise translate(exc, "producing to Kafka") from None
        for future in futures:
            if not future.is_done or future.exception is not None:
                exc = future.exception or RuntimeError("a send was not acknowledged after flush")
                raise translate(exc, "producing to Kafka")

    def rollback(self) -> None:
        # what was sent stays in the topics without a marker; consumers drop it. A new attempt id keeps the
        # batch's next try apart from this one.
        self._open, self._sent, self._written = None, [], set()
        self.attempt = uuid.uuid4().hex[:12]

    # ------------------------------------------------------------ dead letters

    def save_dead_letters(self, letters: list[DeadLetter]) -> None:
        topic = dead_letter_topic(self.url)
        for d in letters:
            doc = {"pipeline": d.pipeline, "source_table": d.source_table, "target_table": d.target_table,
                   "op": d.op, "key": d.key, "error": d.error, "event": d.event, "position": d.position,
                   "at": datetime.now(timezone.utc).isoformat()}
            self._sent.append(self.producer.send(topic, key=d.pipeline.encode(), value=dumps_exact(doc).encode()))

    # ------------------------------------------------------------ row primitives a topic does not have

    def _unsupported(self, *_args, **_kwargs):
        raise TerminalError("a Kafka target receives change events from a pipeline; it has no rows to write "
                            "directly (full loads into Kafka are not supported: let the stream carry the rows)")

    savepoint = rollback_to_savepoint = release_savepoint = _unsupported
    upsert = insert = delete = truncate = _unsupported

    def set_origin(self, origin: str | None) -> None:
        pass  # the origin travels in every message

    def save_snapshot_progress(self, pipeline: str, table: str, progress: SnapshotProgress) -> None:
        self._unsupported()

    def close(self) -> None:
        if self.producer is not None:
            try:
                self.producer.close(timeout=5)
            finally:
                self.producer = None
