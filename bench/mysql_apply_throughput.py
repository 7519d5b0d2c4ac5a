"""Apply throughput into MariaDB: PostgreSQL → MariaDB through tiersync's trigger change log, against plain
pymysql multi-row upserts of the same rows measured in the same run.

Throwaway servers are started: PostgreSQL (fsync off) holds the source, MariaDB the targets.
tiersync: a backlog of N changes (80% inserts, 20% updates, a 10-column table) is written through the
  capture trigger into the source's change log; then `python -m ops run --once` drains it into MariaDB
  (multi-row INSERT … ON DUPLICATE KEY UPDATE in one transaction per batch, with the checkpoint).
  Timed from process start to exit; the engine's peak RSS comes from os.wait4.
baseline: the same N row images (read from the source beforehand, not timed) written into another
  MariaDB database by pymysql `executemany` of one multi-row INSERT … ON DUPLICATE KEY UPDATE per
  transaction of batch-size rows — the floor for any Python writer using pymysql.
apply stage: tiersync's BatchApplier and MariaDB session alone, in this process, over the same change log
  (read and mapped untimed), into a third database — the figure to hold against the baseline.
All targets are then checked against the source (row count and sums of every numeric column).

Run:  flock /tmp/bench.lock .venv/bin/python bench/mysql_apply_throughput.py [--changes 1000000]
      flock /tmp/bench.lock .venv/bin/python bench/mysql_apply_throughput.py --changes 50000   # quick
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.apply_throughput import DDL, TABLE, run_engine, workload  # noqa: E402
from tests.harness.mariadb import MariaDBServer  # noqa: E402
from tests.harness.postgres import PostgresServer  # noqa: E402
from tests.helpers import pg_exec, pg_rows, write_node  # noqa: E402
from tests.mysql_helpers import _connect, my_exec, my_rows  # noqa: E402

MY_DDL = """CREATE TABLE bench_item (
    id bigint PRIMARY KEY, account_id int NOT NULL, qty int NOT NULL, status smallint NOT NULL,
    region int NOT NULL, price decimal(12,2) NOT NULL, note text, updated_at timestamp(6) NOT NULL,
    active boolean NOT NULL, due date) CHARSET utf8mb4"""
COLUMNS = "id, account_id, qty, status, region, price, note, updated_at, active, due"
STATE = "SELECT count(*), sum(qty), sum(price), sum(active), sum(status), sum(region) FROM bench_item"
MARIADB_SETTINGS = {"innodb-buffer-pool-size": "512M", "innodb-log-file-size": "256M"}


def changes_as_rows(source: str, changes: int) -> list[tuple]:
    """The row images the baseline writes: every inserted row, then every updated row again."""
    rows = pg_rows(source, f"SELECT {COLUMNS} FROM {TABLE} ORDER BY id")
    updates = changes // 5
    inserted = [r[:3] + r[3:] for r in rows]
    return inserted + [r for r in rows if r[0] % 4 == 0][:updates]


def run_baseline(target: str, rows: list[tuple], batch: int) -> float:
    import pymysql  # noqa: F401 - the driver under test

    updates = ", ".join(f"{c} = VALUES({c})" for c in COLUMNS.split(", ")[1:])
    sql = f"INSERT INTO bench_item ({COLUMNS}) VALUES ({', '.join(['%s'] * 10)}) ON DUPLICATE KEY UPDATE {updates}"
    conn = _connect(target)
    conn.autocommit(False)
    started = time.monotonic()
    with conn.cursor() as cur:
        for start in range(0, len(rows), batch):
            cur.executemany(sql, rows[start:start + batch])
            conn.commit()
    seconds = time.monotonic() - started
    conn.close()
    return seconds


def stage_setup(config: Path):
    """A reader of the same change log under another consumer name (never acknowledged: nothing purged)."""
    from engine.config import load_config
    from engine.plan import build_plan

    node = load_config(config)
    plan = build_plan(node, node.pipeline("bench"))
    reader = plan.source.reader(node.pipeline("bench").source, "apply_stage", plan.captured, None, plan.node_id)
    return plan, reader


def run_apply_stage(plan, reader, stage_target: str, batch: int, expected) -> tuple[float, bool]:
    """tiersync's apply stage alone (BatchApplier over a MariaDB session); reading and mapping are not timed."""
    from engine.apply import Batch, BatchApplier
    from engine.registry import connector_for

    target = connector_for(stage_target)
    target.ensure_state()
    info = target.describe(target.qualify("bench_item"))
    session = target.target_session()
    applier = BatchApplier(session, {info.id: info})
    mapping = next(iter(plan.mappings.values()))
    mapping.target = info.id
    seconds = 0.0
    while True:
        read = reader.read(batch)
        if not read.events:
            break
        changes = [c for event in read.events for c in mapping.map(event)]
        started = time.monotonic()
        applier.apply(Batch("stage", changes, read.position, len(read.events)))
        seconds += time.monotonic() - started
    session.close()
    reader.close()
    return seconds, my_rows(stage_target, STATE) == expected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=10000)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start "
          "(other work on the machine skews every figure below)", flush=True)
    pg = maria = None
    try:
        pg = PostgresServer(settings={"shared_buffers": "256MB", "max_wal_size": "8GB"}).init().start()
        maria = MariaDBServer(MARIADB_SETTINGS).init().start()
        with tempfile.TemporaryDirectory(prefix="tiersync-bench-") as workdir:
            source = pg.create_database("ts_source")
            target, baseline_target = maria.create_database("ts_target"), maria.create_database("baseline")
            stage_target = maria.create_database("stage_target")
            pg_exec(source, DDL)
            for url in (target, baseline_target, stage_target):
                my_exec(url, MY_DDL)
            config = write_node(Path(workdir) / "node.yaml", {"src": source, "dst": target}, [{
                "name": "bench", "source": {"database": "src", "tables": [TABLE]},
                "target": {"database": "dst", "mode": "mirror"}, "batch_size": args.batch_size,
                "mappings": [{"source": TABLE, "target": "bench_item"}]}])
            import subprocess

            subprocess.run([sys.executable, "-m", "ops", "triggers", "install", "--config", str(config),
                            "--pipeline", "bench"], check=True, cwd=ROOT, capture_output=True)
            generated = workload(source, args.changes)
            pg_exec(source, "VACUUM ANALYZE tiersync.tiersync_change_log")
            print(f"workload written in {generated:.1f}s", flush=True)
            plan, stage_reader = stage_setup(config)  # registers a second consumer: the log stays for it
            # the engine first, while this process is small: a child's peak RSS starts at its parent's size
            seconds, rss_kb = run_engine(config, Path(workdir) / "engine.log")
            expected = pg_rows(source, f"SELECT count(*), sum(qty), sum(price), sum(active::int), sum(status), "
                                       f"sum(region) FROM {TABLE}")
            same = my_rows(target, STATE) == expected
            stage_seconds, stage_same = run_apply_stage(plan, stage_reader, stage_target, args.batch_size, expected)
            rows = changes_as_rows(source, args.changes)
            baseline_seconds = run_baseline(baseline_target, rows, args.batch_size)
            del rows
            baseline_same = my_rows(baseline_target, STATE) == expected
    finally:
        for server in (pg, maria):
            if server is not None:
                server.destroy()
    n = args.changes
    rate, base_rate = n / seconds, n / baseline_seconds
    print()
    print(f"changes                              {n}  (batch size {args.batch_size})")
    print(f"tiersync PostgreSQL → MariaDB        {seconds:8.2f} s  {rate:10,.0f} changes/s  (end to end)")
    stage_rate = n / stage_seconds
    print(f"tiersync apply stage alone           {stage_seconds:8.2f} s  {stage_rate:10,.0f} changes/s  "
          f"(BatchApplier + MariaDB session)")
    print(f"pymysql executemany upserts          {baseline_seconds:8.2f} s  {base_rate:10,.0f} changes/s  (baseline)")
    print(f"ratio end to end / baseline          {rate / base_rate:8.2f}")
    print(f"ratio apply stage / baseline         {stage_rate / base_rate:8.2f}")
    print(f"engine peak RSS                      {rss_kb / 1024:8.1f} MB")
    print(f"tiersync target == source            {same}  (apply stage: {stage_same})")
    print(f"baseline target == source            {baseline_same}")
    print(f"bar >= 30,000 changes/s end to end   {'met' if rate >= 30_000 else 'NOT met'}")
    print(f"bar >= 30,000 changes/s apply stage  {'met' if stage_rate >= 30_000 else 'NOT met'}")
    print(f"bar peak RSS < 300 MB                {'met' if rss_kb / 1024 < 300 else 'NOT met'}")
    if not (same and stage_same and baseline_same):
        sys.exit("replication was incomplete or wrong; the figures above do not count")


if __name__ == "__main__":
    main()
