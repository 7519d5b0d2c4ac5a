"""Trigger overhead: pgbench's TPC-B-like workload with and without tiersync capture, in the same run.

One throwaway PostgreSQL server is started with durable settings (fsync, full_page_writes and
synchronous_commit on). `pgbench -i -s SCALE` fills a database; then, for each round,
pgbench runs once without capture and once with capture installed (through a node YAML and
`tiersync triggers install`) on pgbench_accounts, pgbench_tellers, pgbench_branches
(primary keys) and pgbench_history (no key: `mode: append`). Capture is removed again with
`tiersync triggers uninstall --force` after each run with it, which drops the change log, so
every run with capture starts from an empty log and every run without it has no tiersync
object at all. An unmeasured warm-up run comes first; rounds alternate A-B, B-A (without/with,
then with/without) to cancel drift. Each run follows a CHECKPOINT.

Run:  .venv/bin/python bench/trigger_overhead.py [--duration 30] [--rounds 2] [--scale 10]
      .venv/bin/python bench/trigger_overhead.py --duration 5 --rounds 1     # quick run
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.harness.postgres import PostgresServer, pg_bin  # noqa: E402
from tests.helpers import pg_exec, pg_rows, write_node  # noqa: E402

SETTINGS = {"fsync": "on", "full_page_writes": "on", "synchronous_commit": "on",
            "shared_buffers": "256MB", "max_wal_size": "4GB", "checkpoint_timeout": "30min"}
KEYED = ["public.pgbench_accounts", "public.pgbench_branches", "public.pgbench_tellers"]
HISTORY = "public.pgbench_history"


def pgbench(server: PostgresServer, *args: str) -> str:
    command = [pg_bin("pgbench"), "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres", *args, "bench"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def tiersync(*args: str) -> None:
    """The `tiersync` CLI, run as `python -m ops` from ROOT so this checkout's code is what gets measured."""
    result = subprocess.run([sys.executable, "-m", "ops", *args], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"tiersync {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")


def timed_run(server: PostgresServer, args, seconds: int) -> float:
    """One pgbench run after a checkpoint; returns its TPS (without connection time)."""
    pg_exec(server.url("bench"), "CHECKPOINT")
    output = pgbench(server, "-c", str(args.clients), "-j", str(args.threads), "-T", str(seconds))
    match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", output)
    if not match:
        sys.exit(f"no TPS in pgbench's output:\n{output}")
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", "-T", type=int, default=30, help="seconds per pgbench run (default 30)")
    parser.add_argument("--rounds", type=int, default=2, help="without/with pairs (default 2)")
    parser.add_argument("--warmup", type=int, default=10, help="seconds of unmeasured pgbench first (default 10)")
    parser.add_argument("--scale", type=int, default=10, help="pgbench -i scale factor (default 10)")
    parser.add_argument("--clients", type=int, default=4, help="pgbench -c (default 4)")
    parser.add_argument("--threads", type=int, default=2, help="pgbench -j (default 2)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="tiersync-bench-"))
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start "
          "(other work on the machine skews every figure below)", flush=True)
    server = PostgresServer(settings=SETTINGS).init().start()
    try:
        url = server.url("bench")
        server.create_database("bench")
        target = server.create_database("bench_target")  # named by the YAML; install never touches it
        shown = {name: pg_rows(url, f"SHOW {name}")[0][0] for name in ("fsync", "synchronous_commit",
                                                                       "full_page_writes")}
        print(f"server: PostgreSQL on port {server.port}, "
              + ", ".join(f"{k}={v}" for k, v in shown.items()), flush=True)
        pgbench(server, "-i", "-q", "-s", str(args.scale))
        config = write_node(workdir / "node.yaml", {"src": url, "dst": target}, [{
            "name": "pgbench", "source": {"database": "src", "capture": "trigger", "tables": KEYED + [HISTORY]},
            "target": {"database": "dst", "mode": "mirror"},
            "mappings": [{"source": HISTORY, "mode": "append"}]}])
        pipeline = ["--config", str(config), "--pipeline", "pgbench"]

        timed_run(server, args, args.warmup)  # fills caches and sets hint bits; not counted
        runs: dict[str, list[float]] = {"without": [], "with": []}
        for round_no in range(1, args.rounds + 1):
            order = ("without", "with") if round_no % 2 else ("with", "without")  # ABBA cancels linear drift
            for mode in order:
                if mode == "with":
                    tiersync("triggers", "install", *pipeline)
                runs[mode].append(timed_run(server, args, args.duration))
                note = ""
                if mode == "with":
                    logged = pg_rows(url, "SELECT count(*) FROM tiersync.tiersync_change_log")[0][0]
                    note = f" ({logged} change-log rows)"
                    tiersync("triggers", "uninstall", "--force", *pipeline)  # drops the log: next run starts empty
                print(f"round {round_no}: {mode:7} capture {runs[mode][-1]:9.1f} tps{note}", flush=True)
    finally:
        server.destroy()

    without, with_capture = runs["without"], runs["with"]
    tps_without, tps_with = statistics.mean(without), statistics.mean(with_capture)
    ratio = tps_with / tps_without
    print()
    print(f"pgbench -s {args.scale} -c {args.clients} -j {args.threads} -T {args.duration}, {args.rounds} round(s)")
    print(f"TPS without capture (mean)   {tps_without:9.1f}   runs: {', '.join(f'{t:.1f}' for t in without)}")
    print(f"TPS with capture (mean)      {tps_with:9.1f}   runs: {', '.join(f'{t:.1f}' for t in with_capture)}")
    print(f"ratio with / without         {ratio:9.3f}   (per round: "
          f"{', '.join(f'{w / o:.3f}' for w, o in zip(with_capture, without, strict=True))})")
    print(f"bar ratio >= 0.7             {'met' if ratio >= 0.7 else 'NOT met'}")

if __name__ == "__main__":
    main()
