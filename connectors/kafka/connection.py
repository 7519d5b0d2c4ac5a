"""``kafka://`` URLs, topic names, and kafka-python clients made with tiersync's settings."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from engine.errors import ConfigError
from engine.event import TableId

FORMATS = ("json", "avro")
_OPTIONS = {"format", "node", "schema", "partitions", "compact", "registry", "compression"}


@dataclass(frozen=True)
class KafkaUrl:
    """``kafka://host:port[,host:port]/<topic-prefix>?format=json|avro&node=<producing node>&…``"""

    bootstrap: tuple[str, ...]
    prefix: str
    format: str = "json"
    node: str = ""  # as a source: the node whose topics are read
    schema: str = "public"  # the schema part of topic names for tables named without one
    partitions: int = 1
    compact: bool = False  # create topics with cleanup.policy=compact
    registry: str = ""  # a Confluent-compatible registry URL; empty: the embedded registry topic
    compression: str | None = None

    @classmethod
    def parse(cls, url: str) -> KafkaUrl:
        parts = urlsplit(url)
        hosts = tuple(h for h in parts.netloc.split(",") if h)
        problems = []
        if not hosts or any(":" not in h for h in hosts):
            problems.append(f"{url}: name the brokers as host:port[,host:port]")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - _OPTIONS
        if unknown:
            problems.append(f"{url}: unknown option(s) {', '.join(sorted(unknown))}; "
                            f"known: {', '.join(sorted(_OPTIONS))}")
        fmt = query.get("format", "json")
        if fmt not in FORMATS:
            problems.append(f"{url}: format must be json or avro (got {fmt!r})")
        try:
            partitions = int(query.get("partitions", "1"))
            if partitions < 1:
                raise ValueError
        except ValueError:
            problems.append(f"{url}: partitions must be a positive integer")
            partitions = 1
        compression = query.get("compression") or None
        if compression not in (None, "gzip", "lz4", "snappy", "zstd"):
            problems.append(f"{url}: compression must be gzip, lz4, snappy or zstd")
        if problems:
            raise ConfigError(problems)
        return cls(hosts, unquote(parts.path.strip("/")), fmt, query.get("node", ""), query.get("schema", "public"),
                   partitions, query.get("compact", "false").lower() in ("1", "true", "yes"),
                   query.get("registry", ""), compression)

    # ------------------------------------------------------------------ names

    def topic(self, node: str, table: TableId) -> str:
        """``<prefix>.<node>.<schema>.<table>``, each part limited to Kafka's topic characters."""
        return ".".join(topic_part(p) for p in (self.prefix, node, table.schema or self.schema, table.name) if p)

    @property
    def checkpoint_topic(self) -> str:
        return ".".join(p for p in (topic_part(self.prefix), "tiersync", "checkpoints") if p)

    @property
    def schema_topic(self) -> str:
        return ".".join(p for p in (topic_part(self.prefix), "_schemas") if p)


def topic_part(text: str) -> str:
    """A name made of Kafka's topic characters: others (and dots, which separate parts) become ``_xHHHH``."""
    return re.sub(r"[^A-Za-z0-9_-]", lambda m: f"_x{ord(m.group()):04x}", text)


# ---------------------------------------------------------------------- clients

def producer(url: KafkaUrl, **settings):
    """An idempotent producer (acks=all); callers create their topics first (see :func:`ensure_topics`)."""
    from kafka import KafkaProducer

    options = dict(bootstrap_servers=list(url.bootstrap), acks="all", enable_idempotence=True, linger_ms=5,
                   batch_size=512 * 1024, max_request_size=16 * 1024 * 1024, compression_type=url.compression,
                   client_id="tiersync")
    options.update(settings)
    return KafkaProducer(**options)


def consumer(url: KafkaUrl, **settings):
    """A consumer with no group and no auto-commit: positions live in the target's checkpoint."""
    from kafka import KafkaConsumer

    options = dict(bootstrap_servers=list(url.bootstrap), group_id=None, enable_auto_commit=False,
                   auto_offset_reset="earliest", max_poll_records=10000, fetch_max_bytes=32 * 1024 * 1024,
                   max_partition_fetch_bytes=8 * 1024 * 1024, client_id="tiersync", allow_auto_create_topics=False)
    options.update(settings)
    return KafkaConsumer(**options)


def read_to_end(client, tps: list, start: dict | None = None, timeout_ms: int = 2000) -> list:
    """Every record of the partitions ``tps`` from ``start`` (offsets by partition; the beginning when None) to
    their end, partition order kept. Done when every position has reached the end offsets *and* a poll comes back
    empty: some brokers (tansu) report a partition's end as the first offset of its last record batch plus one,
    so stopping at the reported ends alone would drop the rest of that batch."""
    if not tps:
        return []
    client.assign(tps)
    if start is None:
        client.seek_to_beginning(*tps)
    else:
        for tp in tps:
            client.seek(tp, start.get(tp, 0))
    ends = client.end_offsets(tps)
    records: list = []
    while True:
        at_ends = all(client.position(tp) >= end for tp, end in ends.items())
        polled = client.poll(timeout_ms=100 if at_ends else timeout_ms)  # at the ends, what is left is buffered
        for batch in polled.values():
            records.extend(batch)
        if at_ends and not polled:
            return records


def admin(url: KafkaUrl):
    from kafka import KafkaAdminClient

    return KafkaAdminClient(bootstrap_servers=list(url.bootstrap), client_id="tiersync-admin")


def ensure_topics(url: KafkaUrl, names: list[str], compact: bool | None = None) -> None:
    """Create the topics that do not exist yet (``compact``: cleanup.policy=compact)."""
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    client = admin(url)
    try:
        existing = set(client.list_topics())
        wanted = [n for n in dict.fromkeys(names) if n not in existing]
        if not wanted:
            return
        compacted = url.compact if compact is None else compact
        configs = {"cleanup.policy": "compact"} if compacted else {}
        topics = [NewTopic(n, url.partitions if compact is None else 1, 1, topic_configs=configs) for n in wanted]
        try:
            client.create_topics(topics)
        except TopicAlreadyExistsError:
            pass  # another process created it just now
    finally:
        client.close()
