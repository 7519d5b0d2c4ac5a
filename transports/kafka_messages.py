"""What a kafka link sends and receives: outbox batches turned into Kafka messages and messages back into
JSON envelope lines, here or in a helper process.

Turning a batch into messages (parse each JSON envelope, take its key, and for ``format: avro`` encode it with
the topic's typed schema) costs about as much CPU as kafka-python's producer spends on sending it. Under one
GIL the two add up; a :class:`MessageMaker` in a helper process (:func:`background_maker`) makes the next
batches' messages while this process produces the current ones, so a busy link uses two cores. A small send
(a few batches of a quiet link; below the link's ``helper_from``) is made here: starting a process would cost
more than it saves.

Schemas a batch's messages need that were not registered before come back with them (``new_schemas``): the
sender publishes them, and waits for the broker, before it produces a message that names them. A maker whose
messages were not all sent (a failed send) is thrown away with its memory of what was published.

The receiving end (transports/kafka.py) likewise reads a large poll's Avro messages in a :class:`Helper` while
it polls the next messages, and stores polls strictly in order.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

from engine.batchcodec import batch_lines
from engine.debezium import SchemaRegistry, envelope_key, parse_envelope
from engine.errors import TransientError
from engine.jsontext import dumps_exact

from .kafka_avro import LinkTopicWriter


@dataclass
class BatchMessages:
    """The messages of one outbox batch, in order: topic, key and value of each."""

    topics: list[str] = field(default_factory=list)
    keys: list[bytes] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)
    new_schemas: list[tuple[int, dict]] = field(default_factory=list)  # to publish before the messages


class MessageMaker:
    """Turns a link's outbox batches into messages: topic ``<node>.<link>.<table>``, key the primary key as
    JSON, value the JSON envelope as it is or its Avro (Confluent wire format, typed per-topic schemas)."""

    def __init__(self, node: str, link_name: str, fmt: str, keys: dict[str, list[str]]):
        self.node, self.link_name, self.avro, self.keys = node, link_name, fmt == "avro", keys
        self._unpublished: list[tuple[int, dict]] = []
        self._registry = SchemaRegistry(lambda sid, schema: self._unpublished.append((sid, schema)))
        self._writers: dict[str, LinkTopicWriter] = {}
        self._topics: dict[str, str] = {}

    def topic(self, table: str) -> str:
        return f"{self.node}.{self.link_name}.{table}"

    def make(self, payload: bytes) -> BatchMessages:
        out = BatchMessages()
        topics, keys, values = out.topics, out.keys, out.values
        for line in batch_lines(payload):
            doc = parse_envelope(line)
            table = doc["source"]["table"]
            topic = self._topics.get(table) or self._topics.setdefault(table, self.topic(table))
            columns = self.keys.get(table)
            if self.avro:
                writer = self._writers.get(topic) or self._writers.setdefault(
                    topic, LinkTopicWriter(topic, table, self._registry))
                key_values, value = envelope_key(doc, typed=True), writer.encode_json(doc)
            else:
                key_values, value = envelope_key(doc), line
            names = columns or [str(i) for i in range(len(key_values))]
            topics.append(topic)
            keys.append(dumps_exact(dict(zip(names, key_values))).encode())
            values.append(value)
        out.new_schemas, self._unpublished = self._unpublished, []
        return out


_WORK: Callable | None = None  # the helper process's own piece of work


def _start_helper(parent: int, make_work: Callable, args: tuple) -> None:
    global _WORK
    _WORK = make_work(*args)

    def end_with_the_parent() -> None:  # a node killed with -9 must not leave its helper behind
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)
    threading.Thread(target=end_with_the_parent, name="parent-watch", daemon=True).start()


def _do(item):
    return _WORK(item)


class Helper:
    """One piece of work (``make_work(*args)``, a callable) in a helper process, spawned because the node runs
    threads: items are done in the order they are submitted while the caller goes on with earlier results.
    A helper that died raises TransientError; one whose state may be wrong is closed and replaced."""

    def __init__(self, what: str, make_work: Callable, *args):
        self.what = what
        self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_start_helper, initargs=(os.getpid(), make_work, args))

    def submit(self, item) -> Future:
        try:
            return self._pool.submit(_do, item)
        except BrokenProcessPool as exc:
            raise self._died(exc) from None

    def result(self, future: Future, timeout: float):
        try:
            return future.result(timeout)
        except BrokenProcessPool as exc:
            raise self._died(exc) from None
        except TimeoutError:  # concurrent.futures' too, since Python 3.11
            raise TransientError(f"the process {self.what} did not answer within {timeout:g} s") from None

    def _died(self, exc: Exception) -> TransientError:
        return TransientError(f"the process {self.what} died: {exc}")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def background_maker(node: str, link_name: str, fmt: str, keys: dict[str, list[str]]) -> Helper:
    """:meth:`MessageMaker.make` in a helper process."""
    return Helper("making kafka messages", _maker_work, node, link_name, fmt, keys)


def _maker_work(node: str, link_name: str, fmt: str, keys: dict[str, list[str]]) -> Callable:
    return MessageMaker(node, link_name, fmt, keys).make
