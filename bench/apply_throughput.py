"""Apply throughput: PostgreSQL → PostgreSQL through tiersync's trigger change log,
against PostgreSQL's own logical replication measured in the same run.

Two throwaway servers are started (fsync off on both; A has wal_level=logical):
  A holds the source databases, B the target databases.
tiersync: a backlog of N changes (80% inserts, 20% updates, a 10-column table)
  is written through the capture trigger into A's change log; then
  `python -m ops run --once` drains it into B. Timed from process start to exit;
  the engine's peak RSS comes from os.wait4.
baseline: a subscription on B to a publication on A, disabled while the same
  workload runs on A, then enabled; timed until B's row count and aggregates
  match A's (the WAL backlog is held by the slot, as the change log holds ours).
The change log is VACUUM ANALYZEd before the drain, as autovacuum would have done.
Both targets are then checked against their source (count and md5 of every row).

Run:  .venv/bin/python bench/apply_throughput.py [--changes 1000000] [--batch-size 10000]
      .venv/bin/python bench/apply_throughput.py --changes 50000      # quick run
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.harness.postgres import PostgresServer  # noqa: E402
from tests.helpers import pg_exec, pg_rows, write_node  # noqa: E402

TABLE = "public.bench_item"
DDL = f"""CREATE TABLE {TABLE} (
    id bigint PRIMARY KEY, account_id integer NOT NULL, qty integer NOT NULL, status smallint NOT NULL,
    region integer NOT NULL, price numeric(12,2) NOT NULL, note text, updated_at timestamptz NOT NULL,
    active boolean NOT NULL, due date)"""
INSERT = f"""INSERT INTO {TABLE} SELECT g, g % 10007, g % 97, g % 5, 110000 + g % 300,
    round((g % 100000) / 7.0, 2), 'item ' || g || repeat('x', (g % 40)::int),
    timestamptz '2024-01-01 00:00+08' + g * interval '1 second', g % 3 = 0, date '2024-01-01' + (g % 365)::int
    FROM generate_series({{lo}}, {{hi}}) g"""
UPDATE = f"""UPDATE {TABLE} SET qty = qty + 1, price = price + 0.50, note = note || ' upd',
    updated_at = updated_at + interval '1 day', active = NOT active
    WHERE id % 4 = 0 AND id BETWEEN {{lo}} AND {{hi}}"""
CHECKSUM = f"SELECT count(*), md5(string_agg(t::text, ',' ORDER BY id)) FROM {TABLE} t"
QUICK_STATE = f"SELECT count(*), sum(qty), sum(price), sum(active::int) FROM {TABLE}"
CHUNK = 100_000  # rows per workload statement (each statement is one transaction)
# wal_retrieve_retry_interval: the launcher otherwise waits up to 5 s before starting the apply worker
SERVER_SETTINGS = {"shared_buffers": "512MB", "max_wal_size": "8GB", "checkpoint_timeout": "30min",
                   "wal_level": "logical", "max_replication_slots": "10", "max_wal_senders": "10",
                   "wal_retrieve_retry_interval": "100ms"}


def workload(url: str, changes: int) -> float:
    """Write ``changes`` row changes: inserts of ids 1..n, then updates of every 4th id. Returns seconds."""
    updates = changes // 5
    inserts = changes - updates
    statements = [INSERT.format(lo=lo, hi=min(lo + CHUNK - 1, inserts)) for lo in range(1, inserts + 1, CHUNK)]
    last = 4 * updates  # ids 4, 8, ... last: exactly `updates` rows, all inserted above
    statements += [UPDATE.format(lo=lo, hi=min(lo + 4 * CHUNK - 1, last)) for lo in range(1, last + 1, 4 * CHUNK)]
    started = time.monotonic()
    pg_exec(url, *statements)
    return time.monotonic() - started


def run_tiersync(a: PostgresServer, b: PostgresServer, args, workdir: Path) -> dict:
    source, target = a.create_database("ts_source"), b.create_database("ts_target")
    pg_exec(source, DDL)
    pg_exec(target, DDL)
    config = write_node(workdir / "node.yaml", {"src": source, "dst": target}, [{
        "name": "bench", "source": {"database": "src", "capture": "trigger", "tables": [TABLE]},
        "target": {"database": "dst", "mode": "mirror"}, "batch_size": args.batch_size}])
    # the CLI as `python -m ops` from ROOT: the code of the checkout this script lives in is measured
    subprocess.run([sys.executable, "-m", "ops", "triggers", "install", "--config", str(config), "--pipeline", "bench"],
                   check=True, cwd=ROOT, capture_output=True)
    generated = workload(source, args.changes)
    logged = pg_rows(source, "SELECT count(*) FROM tiersync.tiersync_change_log")[0][0]
    pg_exec(source, "VACUUM ANALYZE tiersync.tiersync_change_log")
    print(f"tiersync: workload written in {generated:.1f}s; change log holds {logged} rows", flush=True)

    seconds, rss_kb = run_engine(config, workdir / "engine.log")
    idle_seconds, _ = run_engine(config, workdir / "engine.log")  # nothing pending: start-up cost alone
    left = pg_rows(source, "SELECT count(*) FROM tiersync.tiersync_change_log")[0][0]
    return {"seconds": seconds, "idle": idle_seconds, "rss_mb": rss_kb / 1024, "left": left,
            "same": pg_rows(source, CHECKSUM) == pg_rows(target, CHECKSUM)}


def run_engine(config: Path, log_path: Path) -> tuple[float, int]:
    """`python -m ops run --once` as users run it; returns (seconds, peak RSS in kB)."""
    with open(log_path, "ab") as log:
        started = time.monotonic()
        engine = subprocess.Popen([sys.executable, "-m", "ops", "--log-level", "WARNING", "run",
                                   "--config", str(config), "--once"], cwd=ROOT, stdout=log, stderr=log)
        _, status, usage = os.wait4(engine.pid, 0)  # this child's own rusage, not all children's
        seconds = time.monotonic() - started
    engine.returncode = os.waitstatus_to_exitcode(status)
    if engine.returncode != 0:
        sys.exit(f"the engine failed ({engine.returncode}):\n{log_path.read_text()[-3000:]}")
    return seconds, usage.ru_maxrss


def wait_for(what: str, check, timeout: float = 600.0, every: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(every)


def run_logical(a: PostgresServer, b: PostgresServer, args) -> dict:
    source, target = a.create_database("lr_source"), b.create_database("lr_target")
    pg_exec(source, DDL, f"CREATE PUBLICATION bench_pub FOR TABLE {TABLE}")
    pg_exec(target, DDL, f"CREATE SUBSCRIPTION bench_sub CONNECTION 'host=127.0.0.1 port={a.port} "
                         f"dbname=lr_source user=postgres' PUBLICATION bench_pub")
    wait_for("the initial table sync", lambda: pg_rows(
        target, "SELECT bool_and(srsubstate = 'r') FROM pg_subscription_rel")[0][0])
    pg_exec(target, "ALTER SUBSCRIPTION bench_sub DISABLE")
    wait_for("the apply worker to stop", lambda: not pg_rows(
        source, "SELECT bool_or(active) FROM pg_replication_slots WHERE slot_name = 'bench_sub'")[0][0])
    generated = workload(source, args.changes)
    print(f"baseline: workload written in {generated:.1f}s with the subscription disabled", flush=True)
    expected = pg_rows(source, QUICK_STATE)

    started = time.monotonic()
    pg_exec(target, "ALTER SUBSCRIPTION bench_sub ENABLE")
    wait_for("the subscriber to catch up", lambda: pg_rows(target, QUICK_STATE) == expected, every=0.05)
    seconds = time.monotonic() - started
    same = pg_rows(source, CHECKSUM) == pg_rows(target, CHECKSUM)
    pg_exec(target, "DROP SUBSCRIPTION bench_sub")
    return {"seconds": seconds, "same": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=1_000_000, help="row changes to replicate (default 1000000)")
    parser.add_argument("--batch-size", type=int, default=10000,
                        help="tiersync pipeline batch_size (default 10000, the engine default)")
    args = parser.parse_args()

    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start "
          "(other work on the machine skews every figure below)", flush=True)
    a = b = None
    try:
        a = PostgresServer(settings=SERVER_SETTINGS).init().start()
        b = PostgresServer(settings=SERVER_SETTINGS).init().start()
        with tempfile.TemporaryDirectory(prefix="tiersync-bench-") as workdir:
            ts = run_tiersync(a, b, args, Path(workdir))
        lr = run_logical(a, b, args)
    finally:
        for server in (a, b):
            if server is not None:
                server.destroy()

    n = args.changes
    ts_rate, lr_rate = n / ts["seconds"], n / lr["seconds"]
    print()
    print(f"changes                           {n}  (batch size {args.batch_size})")
    print(f"tiersync trigger log → COPY       {ts['seconds']:8.2f} s  {ts_rate:10,.0f} changes/s")
    print(f"  tiersync start-up alone         {ts['idle']:8.2f} s  (a run with nothing pending)")
    print(f"PostgreSQL logical replication    {lr['seconds']:8.2f} s  {lr_rate:10,.0f} changes/s  (baseline)")
    print(f"ratio tiersync / baseline         {ts_rate / lr_rate:8.2f}")
    print(f"engine peak RSS                   {ts['rss_mb']:8.1f} MB")
    print(f"tiersync target == source         {ts['same']}  (change log rows left: {ts['left']})")
    print(f"baseline target == source         {lr['same']}")
    bar_rate, bar_rss = ts_rate >= 30_000, ts["rss_mb"] < 300
    print(f"bar >= 30,000 changes/s           {'met' if bar_rate else 'NOT met'}")
    print(f"bar peak RSS < 300 MB             {'met' if bar_rss else 'NOT met'}")
    if not (ts["same"] and lr["same"] and ts["left"] == 0):
        sys.exit("replication was incomplete or wrong; the figures above do not count")


if __name__ == "__main__":
    main()
