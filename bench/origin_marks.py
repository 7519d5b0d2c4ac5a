"""What marking applied rows with their origin node costs: origin messages against per-node origins.

One throwaway server (wal_level=logical, fsync off). The same apply session code writes T small
transactions (R rows each, the origin cycling through N nodes: the worst case for a per-transaction cost)
into a fresh database twice in the same run:
  baseline: the earlier marking, one replication origin per (pipeline, node), set up per transaction;
  messages: one replication origin per pipeline, and an origin message before each run of rows.
Then a logical slot on each database is read with the capture reader, which must attribute every row
to its node in both. Prints transactions/s of each and the ratio, and the replication origins each left.

Run:  .venv/bin/python bench/origin_marks.py [--transactions 3000] [--rows 10] [--nodes 100]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from connectors.postgres.logical_reader import PostgresLogicalReader  # noqa: E402
from connectors.postgres.session import PostgresSession  # noqa: E402
from engine.event import TableId  # noqa: E402
from engine.schema import ColumnInfo, TableInfo  # noqa: E402
from engine.seams import CapturedTable  # noqa: E402
from tests.harness.postgres import PostgresServer  # noqa: E402
from tests.helpers import pg_exec, pg_rows  # noqa: E402

TABLE = TableInfo(TableId("public", "qy_jbxx"), (ColumnInfo("qyid", "bigint", False), ColumnInfo("qymc", "text")),
                  ("qyid",))


def apply(url: str, pipeline: str, transactions: int, rows: int, nodes: int, per_node: bool) -> float:
    """Seconds to apply the transactions through one PostgresSession."""
    session = PostgresSession(url, "tiersync")
    if per_node:  # the marking before origin messages
        session._messages, session._per_node_origins = False, True
    try:
        started = time.perf_counter()
        for t in range(transactions):
            session.begin()
            session.lock_pipeline(pipeline)
            session.set_origin(f"county-{t % nodes:04d}")
            session.upsert(TABLE, ["qyid", "qymc"], ["qyid"], [(t * rows + i, f"企业{t}") for i in range(rows)])
            session.commit()
        return time.perf_counter() - started
    finally:
        session.close()


def attributed_correctly(url: str, slot: str, rows: int, nodes: int) -> int:
    """Rows the capture reader attributes to the node that applied them (all of them, or the run is wrong)."""
    reader = PostgresLogicalReader(url, slot, "bench_pub", [CapturedTable(TABLE, ("qyid",))], None, "city")
    good = 0
    try:
        while True:
            batch = reader.read(10_000)
            if not batch.events:
                return good
            for event in batch.events:
                expected = f"county-{(event.key[0] // rows) % nodes:04d}"
                assert event.origin == expected, (event.key, event.origin, expected)
                good += 1
    finally:
        reader.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=3000)
    parser.add_argument("--rows", type=int, default=10)
    parser.add_argument("--nodes", type=int, default=100)
    args = parser.parse_args()
    server = PostgresServer({"wal_level": "logical", "max_replication_slots": str(args.nodes + 20),
                             "fsync": "off", "synchronous_commit": "off"}).init().start()
    try:
        results = {}
        for mode, per_node in (("baseline per-node origins", True), ("origin messages", False)):
            url = server.create_database("per_node" if per_node else "messages")
            pg_exec(url, "CREATE TABLE qy_jbxx (qyid bigint PRIMARY KEY, qymc text)",
                    "CREATE PUBLICATION bench_pub FOR TABLE qy_jbxx",
                    f"SELECT pg_create_logical_replication_slot('bench_{int(per_node)}', 'pgoutput')")
            pipeline = "bench-" + ("per-node" if per_node else "messages")
            seconds = apply(url, pipeline, args.transactions, args.rows, args.nodes, per_node)
            good = attributed_correctly(url, f"bench_{int(per_node)}", args.rows, args.nodes)
            assert good == args.transactions * args.rows, (good, args.transactions * args.rows)
            origins = pg_rows(url, "SELECT count(*) FROM pg_replication_origin WHERE roname LIKE %s",
                              (f"tiersync:{pipeline}%",))[0][0]
            results[mode] = args.transactions / seconds
            print(f"{mode:<28} {args.transactions} transactions x {args.rows} rows, {args.nodes} nodes: "
                  f"{seconds:6.2f} s, {results[mode]:8.0f} transactions/s, replication origins used: {origins}, "
                  f"rows attributed correctly: {good}")
        print(f"ratio messages / baseline: {results['origin messages'] / results['baseline per-node origins']:.2f}")
    finally:
        server.destroy()


if __name__ == "__main__":
    main()
