"""Exchange benchmarks: county → national latency over three hops, and Kafka throughput per link.

Latency (always): a chain of nodes on one throwaway PostgreSQL server, each with its own business and
exchange database, each a separate `tiersync run` process:
    county --exchange-db--> city --http--> province --exchange-db--> national
The city and the province apply every change into their own business tables and relay it. The county
commits 10 rows every 10 ms (1,000 changes/s) for --seconds; each row carries its commit-time clock
(clock_timestamp()), national stamps the row when it applies it; latency = applied - created, p50/p99
over every row. Baseline in the same run: the same load over ONE hop (county --exchange-db--> national).

Kafka (--kafka): one link, sender and receiver with SQLite exchange databases and the tansu broker of
the tests; --events changes are queued in the sender's outbox first, then timed: the link sender
(decode, encode as Debezium Avro/JSON, produce, acks=all) and the receiving end (consume, rebuild
batches, store them in the inbox with offsets). Baseline in the same run: raw kafka-python producing
and consuming the very same pre-encoded messages (same keys, values, headers, partitions, producer settings).

Run:  flock /tmp/bench.lock .venv/bin/python bench/exchange_latency.py [--seconds 30] [--kafka] [--events 200000]
        [--format avro|json] [--compression lz4|zstd|gzip|none]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.exchange_nodes import inbox_in, node_file  # noqa: E402
from tests.harness.postgres import PostgresServer  # noqa: E402
from tests.helpers import cli, pg_exec, pg_rows, spawn_engine  # noqa: E402

SOURCE_DDL = ("CREATE TABLE ev (id bigint PRIMARY KEY, payload text NOT NULL, "
              "created_at timestamptz NOT NULL DEFAULT clock_timestamp())")
SINK_DDL = ("CREATE TABLE ev (id bigint PRIMARY KEY, payload text NOT NULL, created_at timestamptz NOT NULL, "
            "applied_at timestamptz NOT NULL DEFAULT clock_timestamp())")
ROUTE = {"ev": {"key": ["id"], "up": True}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


POLL = 0.02  # seconds between polls of an idle pipeline, link or relay (each node, each hop)


def chain(server: PostgresServer, work: Path, tiers: list[tuple[str, str]], transports: list[str]) -> list[Path]:
    """Node files for a chain (id, tier) linked upward by ``transports``; returns them county first."""
    tag = f"{os.getpid()}_{len(tiers)}"
    biz = [server.create_database(f"biz{i}_{tag}") for i in range(len(tiers))]
    xdb = [server.create_database(f"x{i}_{tag}") for i in range(len(tiers))]
    ports = [free_port() for _ in tiers]
    pg_exec(biz[0], SOURCE_DDL)
    for url in biz[1:]:
        pg_exec(url, SINK_DDL)
    files = []
    for i, (node, tier) in enumerate(tiers):
        links = {}
        if i + 1 < len(tiers):  # the parent
            parent = {"role": "parent", "transport": transports[i]}
            parent.update({"url": f"http://127.0.0.1:{ports[i + 1]}", "key": "bench-key"}
                          if transports[i] == "http" else {"inbox": xdb[i + 1]})
            links[tiers[i + 1][0]] = parent
        if i > 0:  # the child (nothing is routed down: an http child link only receives)
            child = {"role": "child", "region": f"11010{i - 1}", "transport": transports[i - 1]}
            child.update({"key": "bench-key"} if transports[i - 1] == "http" else {"inbox": xdb[i - 1]})
            links[tiers[i - 1][0]] = child
        exchange = {"database": "x", "poll_interval": POLL, "tables": ROUTE, "links": links}
        if i > 0 and transports[i - 1] == "http":
            exchange["listen"] = f"127.0.0.1:{ports[i]}"
        pipelines = [inbox_in("x", "biz", "ev", "ev", name=f"ev-in-{i}", poll_interval=POLL)] if i > 0 else [
            {"name": "ev-out", "source": {"database": "biz", "tables": ["ev"]}, "target": {"database": "x",
             "outbox": True}, "poll_interval": POLL}]
        node = {"id": node, "tier": tier, "region": f"11010{i}"}
        if i + 1 < len(tiers):
            node["parent"] = tiers[i + 1][0]
        files.append(node_file(work / f"{node['id']}.yaml", node, {"biz": biz[i], "x": xdb[i]}, exchange, pipelines))
    cli("triggers", "install", "--config", str(files[0]), "--pipeline", "ev-out")
    return files


def load(url: str, seconds: float, rate: int) -> int:
    """``rate`` inserts per second in transactions of rate/100 rows, every 10 ms, for ``seconds``."""
    import psycopg

    per_tick = max(1, rate // 100)
    n = 0
    with psycopg.connect(url, autocommit=True) as conn:
        started = time.monotonic()
        tick = 0
        while time.monotonic() - started < seconds:
            with conn.transaction():
                with conn.cursor() as cur:
                    cur.executemany("INSERT INTO ev (id, payload) VALUES (%s, %s)",
                                    [(n + i, f"change {n + i}") for i in range(per_tick)])
            n += per_tick
            tick += 1
            delay = started + tick * 0.01 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    return n


def latency(server: PostgresServer, work: Path, tiers, transports, seconds: float, rate: int) -> dict:
    files = chain(server, work, tiers, transports)
    engines = [spawn_engine(f, log=work / f"{f.stem}.log") for f in files]
    try:
        time.sleep(3)  # every node up and idle
        source = _biz(files[0])
        sink = _biz(files[-1])
        sent = load(source, seconds, rate)
        deadline = time.monotonic() + 120
        while pg_rows(sink, "SELECT count(*) FROM ev")[0][0] < sent:
            if time.monotonic() > deadline:
                raise SystemExit(f"national has {pg_rows(sink, 'SELECT count(*) FROM ev')[0][0]} of {sent}")
            time.sleep(0.2)
        p50, p99, worst = pg_rows(sink, "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d), "
                                        "percentile_cont(0.99) WITHIN GROUP (ORDER BY d), max(d) FROM "
                                        "(SELECT extract(epoch FROM applied_at - created_at) AS d FROM ev) t")[0]
        return {"changes": sent, "p50": float(p50), "p99": float(p99), "max": float(worst)}
    finally:
        for engine in engines:
            engine.terminate()
        for engine in engines:
            engine.wait(30)


def _biz(config: Path) -> str:
    import yaml

    return yaml.safe_load(config.read_text(encoding="utf-8"))["databases"]["biz"]["url"]


# ------------------------------------------------------------------ kafka


def cpu_seconds() -> float:
    """CPU time of this process and of the helper processes it ran (a busy link makes its messages in one),
    once they have ended; the broker, still running, is not counted."""
    deadline = time.monotonic() + 10
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    helpers = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + helpers.ru_utime + helpers.ru_stime


def process_cpu(pid: int) -> float:
    """CPU seconds another process (the broker) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def kafka_throughput(work: Path, events: int, fmt: str, compression: str) -> None:
    from datetime import datetime, timezone
    from decimal import Decimal

    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    from connectors.kafka.connection import read_to_end
    from engine.config import Config
    from engine.event import ChangeEvent, Op, TableId
    from engine.network import LinkSender, exchange_store
    from tests.harness.kafka import KafkaBroker
    from transports.kafka import KafkaReceiver

    broker = KafkaBroker(log=work / "broker.log").start()
    try:
        link = {"transport": "kafka", "brokers": [broker.bootstrap], "format": fmt, "batch_size": 1000,
                "compression": compression}

        def node(me, other, role):
            return Config.model_validate({
                "node": {"id": me, "tier": "city", "region": "110100"},
                "databases": {"x": {"url": f"sqlite:///{work}/{me}-x.db"}},
                "exchange": {"database": "x", "tables": {"qy_jbxx": {"key": ["qyid"], "up": True}},
                             "links": {other: {"role": role, "region": "110101", **link}}}})
        sender, receiver = node("county-1", "city-1", "parent"), node("city-1", "county-1", "child")
        now = datetime.now(timezone.utc)
        store = exchange_store(sender)
        store.ensure()
        made = 0
        while made < events:
            chunk = [ChangeEvent(Op.CREATE, TableId(None, "qy_jbxx"), (i,), None,
                                 {"qyid": i, "qymc": f"企业{i}", "xzqh": "110101", "zczb": Decimal(i) / 4,
                                  "clrq": now.date(), "dz": "北京市东城区某街道1号", "lxdh": "010-12345678",
                                  "gxsj": now}, i, origin="county-1", path=("county-1",), captured_at=now,
                                 source_node="county-1") for i in range(made, min(events, made + 1000))]
            store.queue("bench", "x", len(chunk), "county-1", [("city-1", chunk)])
            made += len(chunk)
        store.close()
        stop = threading.Event()
        broker_cpu = {}
        started, cpu, at = time.monotonic(), cpu_seconds(), process_cpu(broker.process.pid)
        LinkSender(sender, "city-1", stop).run(once=True)
        send_s = time.monotonic() - started
        send_cpu = cpu_seconds() - cpu
        broker_cpu["send"] = process_cpu(broker.process.pid) - at
        # what went over the wire, for the baseline: the same messages, read back (untimed)
        consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False, group_id=None,
                                 auto_offset_reset="earliest", max_partition_fetch_bytes=8 * 1024 * 1024)
        sent_topic = "county-1.city-1.qy_jbxx"
        messages = [(r.key, r.value, r.headers, r.partition) for r in read_to_end(
            consumer, [TopicPartition(sent_topic, p) for p in consumer.partitions_for_topic(sent_topic)])]
        consumer.close()
        assert len(messages) == events, f"the topic holds {len(messages)} of {events}"
        receiving = KafkaReceiver(receiver, "county-1", stop)
        last = {"at": 0.0}
        from engine import exchange as exchange_module

        original = exchange_module.ExchangeStore.receive_many

        def timed(self, *args, **kwargs):
            original(self, *args, **kwargs)
            last["at"] = time.monotonic()
        exchange_module.ExchangeStore.receive_many = timed
        started, cpu, at = time.monotonic(), cpu_seconds(), process_cpu(broker.process.pid)
        receiving.run(once=True)
        # wall time to the last store; CPU with the helper's and the drained run's last empty polls
        receive_s, receive_cpu = last["at"] - started, cpu_seconds() - cpu
        broker_cpu["receive"] = process_cpu(broker.process.pid) - at
        exchange_module.ExchangeStore.receive_many = original
        check = exchange_store(receiver)
        stored = check.conn.execute("SELECT coalesce(sum(events), 0) FROM tiersync_inbox").fetchone()[0]
        check.close()
        assert stored == events, f"the inbox holds {stored} of {events}"

        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5, enable_idempotence=True,
                                 batch_size=512 * 1024, max_request_size=8 * 1024 * 1024,
                                 compression_type=None if compression == "none" else compression)
        topic = "baseline.raw.qy_jbxx"
        producer.send(topic, key=b"warm-up", value=b"{}").get(30)  # topic created and metadata known, untimed
        started, cpu, at = time.monotonic(), time.process_time(), process_cpu(broker.process.pid)
        futures = [producer.send(topic, key=k, value=v, headers=h, partition=p) for k, v, h, p in messages]
        producer.flush()
        for future in futures:
            future.get(30)
        raw_send_s, raw_send_cpu = time.monotonic() - started, time.process_time() - cpu
        broker_cpu["raw send"] = process_cpu(broker.process.pid) - at
        producer.close()
        consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False, group_id=None,
                                 max_partition_fetch_bytes=8 * 1024 * 1024)
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        got = -1  # the warm-up message
        started, cpu, at = time.monotonic(), time.process_time(), process_cpu(broker.process.pid)
        while got < len(messages):
            for records in consumer.poll(200, max_records=20000).values():
                got += len(records)
        raw_receive_s, raw_receive_cpu = time.monotonic() - started, time.process_time() - cpu
        broker_cpu["raw receive"] = process_cpu(broker.process.pid) - at
        consumer.close()
    finally:
        broker.stop()
    size = sum(len(m[1]) for m in messages) / len(messages)
    print(f"\nKafka link, {events:,} changes, {fmt} values ({size:.0f} bytes each), {compression} compression, "
          f"one partition:")
    for what, ours, raw in (("send", send_s, raw_send_s), ("receive", receive_s, raw_receive_s)):
        print(f"  {what:<8} tiersync {events / ours:>9,.0f} events/s   raw kafka-python {events / raw:>9,.0f} "
              f"events/s   ratio {raw / ours:.2f}")
    # on a loaded machine wall time follows the other processes; this process's CPU time is its own cost
    # (the broker is another process: neither side's figure includes it)
    print("  per CPU second of this process and its helper (the link's own cost, whatever else the machine runs):")
    for what, ours, raw in (("send", send_cpu, raw_send_cpu), ("receive", receive_cpu, raw_receive_cpu)):
        print(f"  {what:<8} tiersync {events / ours:>9,.0f} events/cpu-s   raw kafka-python "
              f"{events / raw:>9,.0f} events/cpu-s   ratio {raw / ours:.2f}")
    print("  the broker's CPU seconds meanwhile (it shares this machine's cores): " + ", ".join(
        f"{what} {seconds:.1f}" for what, seconds in broker_cpu.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--kafka", action="store_true", help="also measure the Kafka link")
    parser.add_argument("--kafka-only", action="store_true")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--format", choices=["avro", "json"], default="avro")
    from engine.config import LinkConfig

    parser.add_argument("--compression", choices=["none", "lz4", "zstd", "gzip"],
                        default=LinkConfig.model_fields["compression"].default,
                        help="the kafka link's compression (default: the link's default); the baseline uses the same")
    parser.add_argument("--middle", choices=["http", "exchange-db"], default="http",
                        help="transport of the middle hop (city → province)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tiersync-bench-") as tmp:
        work = Path(tmp)
        if not args.kafka_only:
            server = PostgresServer({"fsync": "off", "synchronous_commit": "off"}).init().start()
            try:
                print(f"{args.rate:,} changes/s for {args.seconds:.0f} s, county commit → national apply "
                      f"(other work may be running on this machine):")
                three = latency(server, work, [("county-110101", "county"), ("city-110100", "city"),
                                               ("province-110000", "province"), ("national-100000", "national")],
                                ["exchange-db", args.middle, "exchange-db"], args.seconds, args.rate)
                one = latency(server, work, [("county-910101", "county"), ("national-900000", "national")],
                              ["exchange-db"], args.seconds, args.rate)
            finally:
                server.destroy()
            for label, r in ((f"three hops (exchange-db, {args.middle}, exchange-db)", three),
                             ("baseline: one hop (exchange-db)", one)):
                print(f"  {label:<45} {r['changes']:>7,} changes  p50 {r['p50'] * 1000:7.0f} ms  "
                      f"p99 {r['p99'] * 1000:7.0f} ms  max {r['max'] * 1000:7.0f} ms")
            print(f"  ratio three hops / one hop: p50 {three['p50'] / one['p50']:.2f}, "
                  f"p99 {three['p99'] / one['p99']:.2f}; required p99 ≤ 3 s: "
                  f"{'met' if three['p99'] <= 3 else 'NOT met'}")
        if args.kafka or args.kafka_only:
            kafka_throughput(work, args.events, args.format, args.compression)


if __name__ == "__main__":
    main()
