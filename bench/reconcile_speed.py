"""Reconcile speed: `tiersync reconcile` against reladiff (the maintained successor of data-diff), same run.

One throwaway PostgreSQL server (fsync off) holds two databases with the same N-row, 10-column table
(integer keys); 100 differences are planted in the target (40 changed rows, each in a different column kind,
30 deleted, 30 extra). Both tools compare the two databases' tables over every column:
  tiersync:  python -m ops reconcile --json (bucket checksums inside each database, narrowed, then row hashes)
  reladiff:  reladiff <db_a> table <db_b> table -k id -c % -a hashdiff --skip-sort-results --json, installed
             by this script in its own virtual environment under /tmp (PyPI `reladiff`); each row it prints
             counts its key once.
Both must find exactly the 100 planted keys. Peak RSS of each process comes from os.wait4.
MariaDB is not used here: the MariaDB connector is on another branch (PostgreSQL → PostgreSQL instead).

Run:  flock /tmp/bench.lock .venv/bin/python bench/reconcile_speed.py [--rows 1000000]
      .venv/bin/python bench/reconcile_speed.py --rows 100000          # quick run
      .venv/bin/python bench/reconcile_speed.py --rows 10000000 --skip-reladiff
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.harness.postgres import PostgresServer  # noqa: E402
from tests.helpers import pg_exec, write_node  # noqa: E402

TABLE = "bench_item"
DDL = f"""CREATE TABLE {TABLE} (
    id bigint PRIMARY KEY, account_id integer NOT NULL, qty integer NOT NULL, status smallint NOT NULL,
    region integer NOT NULL, price numeric(12,2) NOT NULL, note text, updated_at timestamptz NOT NULL,
    active boolean NOT NULL, due date)"""
INSERT = f"""INSERT INTO {TABLE} SELECT g, g % 10007, g % 97, g % 5, 110000 + g % 300,
    round((g % 100000) / 7.0, 2), 'item ' || g || repeat('x', (g % 40)::int),
    timestamptz '2024-01-01 00:00+08' + g * interval '1 second', g % 3 = 0, date '2024-01-01' + (g % 365)::int
    FROM generate_series({{lo}}, {{hi}}) g"""
CHUNK = 500_000
RELADIFF_VENV = Path("/tmp/reladiff-venv")
CHANGES = ["qty = qty + 1", "price = price + 0.01", "note = note || ' '", "updated_at = updated_at + interval '1 ms'",
           "active = NOT active", "due = due + 1", "note = NULL", "account_id = -account_id"]


def planted(rows: int) -> tuple[list[str], set[int]]:
    """Statements for the target and the keys they touch: 40 changed, 30 deleted, 30 extra."""
    step = rows // 71
    ids = [1 + i * step for i in range(70)]
    changed, deleted = ids[:40], ids[40:]
    extra = [rows + 1 + i for i in range(30)]
    statements = [f"UPDATE {TABLE} SET {CHANGES[i % len(CHANGES)]} WHERE id = {key}" for i, key in enumerate(changed)]
    statements.append(f"DELETE FROM {TABLE} WHERE id IN ({', '.join(map(str, deleted))})")
    statements.append(INSERT.format(lo=extra[0], hi=extra[-1]))
    return statements, set(changed) | set(deleted) | set(extra)


def timed(command: list[str], **kwargs) -> tuple[float, float, subprocess.CompletedProcess]:
    """Run ``command``; seconds, peak RSS (MB) of that process, and its output."""
    started = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, **kwargs)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        result = subprocess.CompletedProcess(command, os.waitstatus_to_exitcode(status), out.read().decode(),
                                             err.read().decode())
    return seconds, usage.ru_maxrss / 1024, result


def ensure_reladiff() -> Path:
    binary = RELADIFF_VENV / "bin" / "reladiff"
    if not binary.exists():
        subprocess.run([sys.executable, "-m", "venv", str(RELADIFF_VENV)], check=True)
        subprocess.run([str(RELADIFF_VENV / "bin" / "pip"), "install", "-q", "reladiff[postgresql]==0.6.0"],
                       check=True)
    return binary


def run_tiersync(source: str, target: str, workdir: Path) -> dict:
    config = write_node(workdir / "node.yaml", {"src": source, "dst": target}, [{
        "name": "bench", "source": {"database": "src", "tables": [TABLE]}, "target": {"database": "dst"}}])
    seconds, rss, result = timed([sys.executable, "-m", "ops", "--log-level", "WARNING", "reconcile", "--config",
                                  str(config), "--pipeline", "bench", "--json", "--show", "0"], cwd=ROOT)
    if result.returncode not in (0, 1):
        raise SystemExit(f"tiersync reconcile failed ({result.returncode}): {result.stderr}")
    report = json.loads(result.stdout)
    found = {k[1][0] for kind in ("missing", "extra", "different") for k in report["keys"][kind]}
    return {"seconds": seconds, "rss_mb": rss, "found": found, "report": report}


def run_reladiff(binary: Path, source: str, target: str) -> dict:
    # --skip-sort-results: reladiff 0.6.0 crashes sorting its results when a key's row holds a NULL
    seconds, rss, result = timed([str(binary), source, TABLE, target, TABLE, "-k", "id", "-c", "%",
                                  "-a", "hashdiff", "--skip-sort-results", "--json"])
    if result.returncode != 0 or "Traceback" in result.stderr:
        raise SystemExit(f"reladiff failed ({result.returncode}): {result.stderr[-2000:]}")
    # one JSON array per differing row, ["-", ["5", "x5", …]], wrapped by reladiff's console at 80 columns
    found = {int(key) for key in re.findall(r'\["[+-]",\s*\["?(\d+)', result.stdout)}
    return {"seconds": seconds, "rss_mb": rss, "found": found}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--skip-reladiff", action="store_true", help="time tiersync alone (e.g. 10M rows)")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start (other work may share the machine)",
          flush=True)
    binary = None if args.skip_reladiff else ensure_reladiff()
    server = PostgresServer({"shared_buffers": "512MB", "max_wal_size": "8GB", "checkpoint_timeout": "30min"})
    server.init().start()
    try:
        source, target = server.create_database("rc_source"), server.create_database("rc_target")
        started = time.monotonic()
        for url in (source, target):
            pg_exec(url, DDL, *[INSERT.format(lo=lo, hi=min(lo + CHUNK - 1, args.rows))
                                for lo in range(1, args.rows + 1, CHUNK)])
        statements, expected = planted(args.rows)
        pg_exec(target, *statements)
        for url in (source, target):
            pg_exec(url, f"VACUUM ANALYZE {TABLE}")
        print(f"two tables of {args.rows:,} rows written in {time.monotonic() - started:.1f}s; "
              f"{len(expected)} differences planted", flush=True)
        with tempfile.TemporaryDirectory() as workdir:
            for url in (source, target):  # warm both caches the same way for both tools
                pg_exec(url, f"SELECT count(*) FROM {TABLE}")
            ts = run_tiersync(source, target, Path(workdir))
        rd = run_reladiff(binary, source, target) if binary else None
    finally:
        server.destroy()
    report = ts["report"]
    print()
    print(f"rows per table                    {args.rows:,}")
    print(f"tiersync reconcile                {ts['seconds']:8.2f} s   peak RSS {ts['rss_mb']:6.1f} MB   "
          f"found {len(ts['found'])} (missing {report['missing']}, extra {report['extra']}, "
          f"different {report['different']}), exactly the planted: {ts['found'] == expected}")
    if rd is not None:
        print(f"reladiff 0.6.0 (hashdiff)         {rd['seconds']:8.2f} s   peak RSS {rd['rss_mb']:6.1f} MB   "
              f"found {len(rd['found'])}, exactly the planted: {rd['found'] == expected}")
        ratio = ts["seconds"] / rd["seconds"]
        print(f"ratio tiersync / reladiff         {ratio:8.2f}")
        print(f"bar ratio <= 0.5                  {'met' if ratio <= 0.5 else 'NOT met'}")
    print(f"bar peak RSS < 300 MB             {'met' if ts['rss_mb'] < 300 else 'NOT met'}")
    print(f"bar exactly the 100 found         {'met' if ts['found'] == expected else 'NOT met'}")


if __name__ == "__main__":
    main()
