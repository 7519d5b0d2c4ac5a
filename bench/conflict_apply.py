"""Conflict-policy apply cost: the same backlog drained into PostgreSQL with conflict: source_wins (the baseline,
measured in the same run) and with newer_wins, higher_tier_wins and reject, which read the target rows each batch
touches (SELECT … FOR UPDATE) and settle every change in Python before writing.

One throwaway server (fsync off); per policy a fresh source and target database, the same workload of N changes
(80% inserts, 20% updates of a 10-column table) written through the capture trigger, then `python -m ops run
--once` timed from process start to exit. Every target is checked against its source (count and md5 of the
replicated columns) and must hold no dead letters.

Run:  .venv/bin/python bench/conflict_apply.py [--changes 200000] [--batch-size 10000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.apply_throughput import DDL, SERVER_SETTINGS, TABLE, run_engine, workload  # noqa: E402
from tests.harness.postgres import PostgresServer  # noqa: E402
from tests.helpers import pg_exec, pg_rows, write_node  # noqa: E402

COLUMNS = "id, account_id, qty, status, region, price, note, updated_at, active, due"
CHECKSUM = f"SELECT count(*), md5(string_agg(({COLUMNS})::text, ',' ORDER BY id)) FROM {TABLE}"
POLICIES = {  # the baseline carries the same metadata columns, so only the settling differs
    "source_wins": {"conflict": "source_wins"},
    "newer_wins": {"conflict": "newer_wins"},
    "higher_tier_wins": {"conflict": "higher_tier_wins"},
    "reject": {"conflict": "reject"},
}


def run_policy(server: PostgresServer, policy: str, args, workdir: Path) -> dict:
    source, target = server.create_database(f"src_{policy}"), server.create_database(f"dst_{policy}")
    pg_exec(source, DDL)
    pg_exec(target, DDL, f"ALTER TABLE {TABLE} ADD COLUMN tbsj timestamptz, ADD COLUMN sjcj text")
    config = write_node(workdir / f"{policy}.yaml", {"src": source, "dst": target}, [{
        "name": "bench", "source": {"database": "src", "capture": "trigger", "tables": [TABLE]},
        "target": {"database": "dst", "mode": "mirror"}, "batch_size": args.batch_size,
        "mappings": [{"source": TABLE, "metadata": {"captured_at": "tbsj", "tier": "sjcj"}, **POLICIES[policy]}]}])
    subprocess.run([sys.executable, "-m", "ops", "triggers", "install", "--config", str(config), "--pipeline", "bench"],
                   check=True, cwd=ROOT, capture_output=True)
    workload(source, args.changes)
    pg_exec(source, "VACUUM ANALYZE tiersync.tiersync_change_log")
    seconds, rss_kb = run_engine(config, workdir / f"{policy}.log")
    return {"seconds": seconds, "rss_mb": rss_kb / 1024,
            "same": pg_rows(source, CHECKSUM) == pg_rows(target, CHECKSUM),
            "dead": pg_rows(target, "SELECT count(*) FROM tiersync.tiersync_dead_letter")[0][0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=200_000, help="row changes per policy (default 200000)")
    parser.add_argument("--batch-size", type=int, default=10000, help="pipeline batch_size (default 10000)")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start "
          "(other work on the machine skews every figure below)", flush=True)
    server = PostgresServer(settings=SERVER_SETTINGS).init().start()
    try:
        with tempfile.TemporaryDirectory(prefix="tiersync-bench-") as workdir:
            results = {policy: run_policy(server, policy, args, Path(workdir)) for policy in POLICIES}
    finally:
        server.destroy()
    base = args.changes / results["source_wins"]["seconds"]
    print(f"\nchanges per policy {args.changes} (batch size {args.batch_size}); PostgreSQL → PostgreSQL")
    for policy, r in results.items():
        rate = args.changes / r["seconds"]
        label = "(baseline)" if policy == "source_wins" else f"ratio {rate / base:.2f}"
        print(f"{policy:18} {r['seconds']:8.2f} s {rate:10,.0f} changes/s  {label:12} peak RSS {r['rss_mb']:6.1f} MB"
              f"  target == source: {r['same']}  dead letters: {r['dead']}")
    if not all(r["same"] and r["dead"] == 0 for r in results.values()):
        sys.exit("a target differs from its source or holds dead letters; the figures above do not count")


if __name__ == "__main__":
    main()
