"""Logical capture throughput: PostgreSQL → PostgreSQL through tiersync's `capture: logical` (pgoutput),
against PostgreSQL's own logical replication measured in the same run, on the same WAL.

Two throwaway servers (fsync off on both, wal_level=logical): A holds the sources, B the targets.
A  500k inserts then 125k updates (every 4th id) of a 10-column table, 10,000 rows per transaction.
   Before the workload, tiersync's slot (`ops slot create`) and a disabled subscription on B
   (copy_data off) both start holding the WAL. Afterwards `python -m ops run --once` drains it,
   timed from process start to exit (peak RSS from os.wait4); then the subscription is enabled and timed
   until the last transaction's last row arrives on B (an index lookup every 50 ms, taking no CPU from
   the apply worker; whole transactions apply in commit order), then B's aggregates are confirmed.
B  One transaction of 1M inserted rows through tiersync alone: seconds, rows/s, peak RSS (the
   engine streams it into one open target transaction, so memory must stay bounded).
C  pgbench -i on the source and on the target (identical data), then both slots, then
   `pgbench -n -c 4 -j 2 -T 20` on the source; the drains are timed as in A (the probe: the count of
   pgbench_history). Changes counted as 4 per pgbench transaction (3 updates + 1 history insert).
   pgbench_history has no key: tiersync maps it with mode append and needs REPLICA IDENTITY FULL on it.
Every target is then checked against its source (count and md5 of every row of every table).

Run:  .venv/bin/python bench/logical_throughput.py            # full: 500k/125k, 1M big, pgbench -T 20
      .venv/bin/python bench/logical_throughput.py --quick    # 50k/12.5k, 50k big, pgbench -T 5
      options: --inserts N --big-rows N --batch-size N --pgbench-scale/-clients/-jobs/-seconds N
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

# the same table, statements and server settings as bench/apply_throughput.py
from bench.apply_throughput import DDL, INSERT, QUICK_STATE, SERVER_SETTINGS, TABLE, UPDATE, wait_for  # noqa: E402
from tests.harness.postgres import PostgresServer, pg_bin  # noqa: E402
from tests.helpers import pg_exec, pg_rows, write_node  # noqa: E402

TXN_ROWS = 10_000  # rows per workload transaction
CREATE_TABLE = lambda server, url: pg_exec(url, DDL)  # noqa: E731
PGB_TABLES = ["pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"]


def same(source: str, target: str, tables: list[str]) -> bool:
    sql = "SELECT count(*), md5(string_agg(t::text, ',' ORDER BY t::text)) FROM {} t"
    return all(pg_rows(source, sql.format(t)) == pg_rows(target, sql.format(t)) for t in tables)


class EngineFailed(Exception):
    """The engine exited non-zero; carries the end of its log."""


def run_engine(config: Path, log_path: Path) -> tuple[float, int]:
    """`python -m ops run --once` as users run it; returns (seconds, peak RSS in kB) of this child alone."""
    with open(log_path, "wb") as log:
        started = time.monotonic()
        engine = subprocess.Popen([sys.executable, "-m", "ops", "--log-level", "WARNING", "run",
                                   "--config", str(config), "--once"], cwd=ROOT, stdout=log, stderr=log)
        _, status, usage = os.wait4(engine.pid, 0)
        seconds = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise EngineFailed(log_path.read_text()[-1500:].strip())
    return seconds, usage.ru_maxrss


def prepare(a: PostgresServer, b: PostgresServer, name: str, tables: list[str], init, workdir: Path,
            batch_size: int, baseline: bool = True, **pipeline) -> tuple[str, str, str, Path]:
    """Source on A, tiersync's target (and the baseline's, a copy of it) on B, initialised alike by ``init``;
    then tiersync's slot and publication (`ops slot create`) and a disabled subscription without initial copy:
    both hold the WAL written from now on. Returns the source, both targets and the node file."""
    source, ts_target = a.create_database(f"{name}_src"), b.create_database(f"{name}_ts")
    init(a, source)
    init(b, ts_target)
    if baseline:
        pg_exec(b.url(), f"CREATE DATABASE {name}_lr TEMPLATE {name}_ts")
    config = write_node(workdir / f"{name}.yaml", {"src": source, "dst": ts_target}, [{
        "name": name, "source": {"database": "src", "capture": "logical", "tables": tables},
        "target": {"database": "dst", "mode": "mirror"}, "batch_size": batch_size} | pipeline])
    subprocess.run([sys.executable, "-m", "ops", "slot", "create", "--config", str(config), "--pipeline", name],
                   check=True, cwd=ROOT, capture_output=True)
    if baseline:
        pg_exec(source, f"CREATE PUBLICATION lr_pub FOR TABLE {', '.join(tables)}")
        pg_exec(b.url(f"{name}_lr"), f"CREATE SUBSCRIPTION lr_sub CONNECTION 'host=127.0.0.1 port={a.port} "
                f"dbname={name}_src user=postgres' PUBLICATION lr_pub WITH (enabled = false, copy_data = false)")
    return source, ts_target, b.url(f"{name}_lr"), config


def baseline_drain(target: str, probe: str, source: str, state: str) -> float:
    """Enable the subscription; seconds until ``probe`` (a cheap query on what the source's last transaction
    wrote; transactions apply atomically in commit order) matches the source, then ``state`` is confirmed."""
    expected_probe, expected = pg_rows(source, probe), pg_rows(source, state)
    started = time.monotonic()
    pg_exec(target, "ALTER SUBSCRIPTION lr_sub ENABLE")
    wait_for("the subscriber to catch up", lambda: pg_rows(target, probe) == expected_probe, timeout=1800, every=0.05)
    seconds = time.monotonic() - started
    wait_for("the subscriber's state", lambda: pg_rows(target, state) == expected, timeout=60)
    pg_exec(target, "DROP SUBSCRIPTION lr_sub")
    return seconds


def workload_a(a: PostgresServer, b: PostgresServer, args, workdir: Path) -> dict:
    source, ts_target, lr_target, config = prepare(a, b, "a", [TABLE], CREATE_TABLE, workdir, args.batch_size)
    inserts, updates = args.inserts, args.updates
    statements = [INSERT.format(lo=lo, hi=min(lo + TXN_ROWS - 1, inserts)) for lo in range(1, inserts + 1, TXN_ROWS)]
    last = 4 * updates  # ids 4, 8, ... last: exactly `updates` rows
    statements += [UPDATE.format(lo=lo, hi=min(lo + 4 * TXN_ROWS - 1, last)) for lo in range(1, last + 1, 4 * TXN_ROWS)]
    started = time.monotonic()
    pg_exec(source, *statements)
    print(f"A: workload written in {time.monotonic() - started:.1f}s ({len(statements)} transactions)", flush=True)
    seconds, rss_kb = run_engine(config, workdir / "engine.log")
    idle, _ = run_engine(config, workdir / "engine.log")  # nothing pending: start-up and catch-up check alone
    probe = f"SELECT qty, note FROM {TABLE} WHERE id = {last or inserts}"  # the last transaction's last row
    lr_seconds = baseline_drain(lr_target, probe, source, QUICK_STATE)
    return {"n": inserts + updates, "ts": seconds, "idle": idle, "rss": rss_kb / 1024, "lr": lr_seconds,
            "ts_same": same(source, ts_target, [TABLE]), "lr_same": same(source, lr_target, [TABLE])}


def workload_b(a: PostgresServer, b: PostgresServer, args, workdir: Path) -> dict:
    source, target, _, config = prepare(a, b, "b", [TABLE], CREATE_TABLE, workdir, args.batch_size, False)
    started = time.monotonic()
    pg_exec(source, INSERT.format(lo=1, hi=args.big_rows))  # one transaction
    print(f"B: {args.big_rows} rows inserted in one transaction in {time.monotonic() - started:.1f}s", flush=True)
    seconds, rss_kb = run_engine(config, workdir / "engine.log")
    return {"n": args.big_rows, "ts": seconds, "rss": rss_kb / 1024, "ts_same": same(source, target, [TABLE])}


def pgbench(server: PostgresServer, url: str, *options: str) -> str:
    command = [pg_bin("pgbench"), "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres", *options,
               url.rsplit("/", 1)[1]]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"pgbench failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def workload_c(a: PostgresServer, b: PostgresServer, args, workdir: Path) -> dict:
    def init(server: PostgresServer, url: str) -> None:  # pgbench -i writes the same rows every time
        pgbench(server, url, "-i", "-q", "-s", str(args.pgbench_scale))
        # tiersync refuses a keyless table without it, even in append mode; pgbench only inserts into it, and
        # the identity adds only to the WAL of updates and deletes, so neither side pays for it
        pg_exec(url, "ALTER TABLE pgbench_history REPLICA IDENTITY FULL")

    source, ts_target, lr_target, config = prepare(a, b, "c", PGB_TABLES, init, workdir, args.batch_size, mappings=[
        {"source": "pgbench_history", "mode": "append"}])
    out = pgbench(a, source, "-n", "-c", str(args.pgbench_clients), "-j", str(args.pgbench_jobs),
                  "-T", str(args.pgbench_seconds))
    tps = next((f"{float(line.split('=')[1].split()[0]):.0f}" for line in out.splitlines() if line[:3] == "tps"), "?")
    txns = pg_rows(source, "SELECT count(*) FROM pgbench_history")[0][0]  # one row per pgbench transaction
    print(f"C: pgbench ran {txns} transactions ({tps} tps)", flush=True)
    args.tps = tps
    seconds, rss_kb = run_engine(config, workdir / "engine.log")
    state = "SELECT (SELECT sum(tbalance) FROM pgbench_tellers), (SELECT sum(bbalance) FROM pgbench_branches)"
    lr_seconds = baseline_drain(lr_target, "SELECT count(*) FROM pgbench_history", source, state)
    return {"n": 4 * txns, "ts": seconds, "rss": rss_kb / 1024, "lr": lr_seconds,
            "ts_same": same(source, ts_target, PGB_TABLES), "lr_same": same(source, lr_target, PGB_TABLES)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: 50k/12.5k, 50k big, pgbench -T 5")
    parser.add_argument("--inserts", type=int, help="workload A inserts, then a quarter as many updates (500000)")
    parser.add_argument("--big-rows", type=int, help="workload B rows in one transaction (default 1000000)")
    parser.add_argument("--batch-size", type=int, default=10000,
                        help="tiersync pipeline batch_size (default 10000, the engine default)")
    parser.add_argument("--pgbench-scale", type=int, default=10)
    parser.add_argument("--pgbench-clients", type=int, default=4)
    parser.add_argument("--pgbench-jobs", type=int, default=2)
    parser.add_argument("--pgbench-seconds", type=int, help="pgbench -T (default 20)")
    args = parser.parse_args()
    args.inserts = args.inserts or (50_000 if args.quick else 500_000)
    args.updates = args.inserts // 4  # every 4th row
    args.big_rows = args.big_rows or (50_000 if args.quick else 1_000_000)
    args.pgbench_seconds = args.pgbench_seconds or (5 if args.quick else 20)

    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start "
          "(other work on the machine skews every figure below)", flush=True)
    results, a, b = {}, None, None
    try:
        a = PostgresServer(settings=SERVER_SETTINGS).init().start()
        b = PostgresServer(settings=SERVER_SETTINGS).init().start()
        with tempfile.TemporaryDirectory(prefix="tiersync-bench-") as workdir:
            for name, workload in (("A", workload_a), ("B", workload_b), ("C", workload_c)):
                try:
                    results[name] = workload(a, b, args, Path(workdir))
                except EngineFailed as exc:  # the other workloads still run
                    results[name] = {"error": str(exc)}
                    print(f"{name}: the engine FAILED:\n{exc}", flush=True)
    finally:
        for server in (a, b):
            if server is not None:
                server.destroy()
    report(args, results)


def report(args, results: dict) -> None:
    ra = results["A"]
    print(f"\ntiersync batch size {args.batch_size}")
    tps = f" ({args.tps} tps)" if hasattr(args, "tps") else ""
    labels = {"A": f"A: {args.inserts} inserts + {args.updates} updates, {TXN_ROWS} rows per transaction",
              "B": f"B: one transaction of {args.big_rows} inserted rows (tiersync only)",
              "C": f"C: pgbench -s {args.pgbench_scale} -c {args.pgbench_clients} -j {args.pgbench_jobs} "
                   f"-T {args.pgbench_seconds}{tps}, 4 changes per transaction"}
    for name, r in results.items():
        print(labels[name])
        if "error" in r:
            print(f"  tiersync FAILED: {r['error'].splitlines()[-1]}")
            continue
        ts_rate, unit = r["n"] / r["ts"], "changes" if name != "B" else "rows"
        print(f"  tiersync logical → PostgreSQL     {r['ts']:8.2f} s  {ts_rate:10,.0f} {unit}/s  "
              f"peak RSS {r['rss']:.1f} MB  ({r['n']} {unit})")
        if "idle" in r:
            print(f"  tiersync start-up alone           {r['idle']:8.2f} s  (a run with nothing pending)")
        if "lr" in r:
            lr_rate = r["n"] / r["lr"]
            r["ratio"] = ts_rate / lr_rate
            print(f"  PostgreSQL logical replication    {r['lr']:8.2f} s  {lr_rate:10,.0f} changes/s  (baseline)")
            print(f"  ratio tiersync / baseline         {r['ratio']:8.2f}")
        print(f"  target == source                  tiersync {r['ts_same']}"
              + (f", baseline {r['lr_same']}" if "lr_same" in r else ""))
    print()
    ratio = ra.get("ratio", 0.0)
    print(f"bar A ratio >= 0.5 (goal >= 1.0)    {'met' if ratio >= 0.5 else 'NOT met'}"
          f"{' (goal met too)' if ratio >= 1.0 else ''}")
    rss = [r["rss"] for r in results.values() if "rss" in r]
    print(f"bar peak RSS < 300 MB (A, B, C)     {'met' if rss and max(rss) < 300 else 'NOT met'}"
          f"{f' (max {max(rss):.1f} MB)' if rss else ''}")
    if any("error" in r or not r["ts_same"] or not r.get("lr_same", True) for r in results.values()):
        sys.exit("a run failed, or replication was incomplete or wrong; those figures do not count")


if __name__ == "__main__":
    main()
