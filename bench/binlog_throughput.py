"""Binlog capture throughput: MariaDB → PostgreSQL through tiersync's `capture: binlog`, against
python-mysql-replication's raw decode rate of the same binlog, measured in the same run.

A throwaway MariaDB (binlog ROW, full image, full metadata, GTIDs) holds the source, a throwaway PostgreSQL
(fsync off) the target. The pipeline's start is marked first (`tiersync binlog mark`), then the source
gets N inserts and N/4 updates (every 4th id) of a 10-column table in transactions of 10,000 rows. Then:
1. `tiersync run --once` drains it, timed from process start to exit (peak RSS from os.wait4): end-to-end
   changes/s, including start-up, decoding, mapping, compaction-free batches, COPY/upsert and checkpoints.
   (tiersync decodes rows of common column types with its own loop, connectors/mysql/binlog_rows.py.)
2. The raw decode baseline: a BinLogStreamReader over exactly the same binlog range (from the marked
   position until all N + N/4 rows arrived, only that table's row events), every row decoded into its dict.
The target is then checked against the source (count and aggregates of every column).

Run:  .venv/bin/python bench/binlog_throughput.py              # 200k inserts + 50k updates
      .venv/bin/python bench/binlog_throughput.py --quick      # 20k + 5k
      options: --inserts N --batch-size N
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

from bench.apply_throughput import SERVER_SETTINGS  # noqa: E402
from tests.harness.mariadb import MariaDBServer  # noqa: E402
from tests.harness.postgres import PostgresServer  # noqa: E402
from tests.helpers import pg_exec, pg_rows, write_node  # noqa: E402
from tests.mysql_helpers import my_exec, my_rows  # noqa: E402

TXN_ROWS = 10_000
MARIA_DDL = """CREATE TABLE bench_item (
    id bigint PRIMARY KEY, account_id int NOT NULL, qty int NOT NULL, status smallint NOT NULL,
    region int NOT NULL, price decimal(12,2) NOT NULL, note varchar(200), updated_at timestamp(6) NOT NULL,
    active tinyint(1) NOT NULL, due date)"""
PG_DDL = """CREATE TABLE bench_item (
    id bigint PRIMARY KEY, account_id integer NOT NULL, qty integer NOT NULL, status smallint NOT NULL,
    region integer NOT NULL, price numeric(12,2) NOT NULL, note text, updated_at timestamptz NOT NULL,
    active smallint NOT NULL, due date)"""
INSERT = """INSERT INTO bench_item SELECT seq, seq % 10007, seq % 97, seq % 5, 110000 + seq % 300,
    round((seq % 100000) / 7.0, 2), concat('item ', seq, repeat('x', seq % 40)),
    timestamp '2024-01-01 00:00:00' + interval seq second, seq % 3 = 0, date '2024-01-01' + interval (seq % 365) day
    FROM seq_{lo}_to_{hi}"""
UPDATE = """UPDATE bench_item SET qty = qty + 1, price = price + 0.50, note = concat(note, ' upd'),
    updated_at = updated_at + interval 1 day, active = 1 - active WHERE id % 4 = 0 AND id BETWEEN {lo} AND {hi}"""
MY_STATE = ("SELECT count(*), sum(account_id), sum(qty), sum(status), sum(region), sum(price), sum(char_length(note)), "
            "sum(unix_timestamp(updated_at)), sum(active), sum(to_days(due) - to_days('2024-01-01')) FROM bench_item")
PG_STATE = ("SELECT count(*), sum(account_id), sum(qty), sum(status), sum(region), sum(price), sum(length(note)), "
            "sum(extract(epoch FROM updated_at)), sum(active), sum(due - date '2024-01-01') FROM bench_item")

def tiersync(*args: str) -> subprocess.Popen:
    """The CLI as users run it."""
    return subprocess.Popen([sys.executable, "-m", "ops", "--log-level", "WARNING", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def run_engine(config: Path) -> tuple[float, int, str]:
    started = time.monotonic()
    engine = tiersync("run", "--config", str(config), "--once")
    output = engine.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(engine.pid, 0)
    seconds = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"the engine failed:\n{output[-2000:]}")
    return seconds, usage.ru_maxrss, output


def raw_decode(maria: MariaDBServer, position: str, expected: int) -> tuple[int, float]:
    """python-mysql-replication alone over the same binlog range: (rows, seconds). Blocking, as the engine reads
    (MariaDB resets non-blocking dumps of large transactions), until the ``expected`` rows have arrived."""
    from pymysqlreplication import BinLogStreamReader
    from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

    from connectors.mysql import binlog_rows
    from connectors.mysql.binlog_position import BinlogPosition

    binlog_rows.uninstall()  # the library's own decoder, whatever this process imported
    start = BinlogPosition.deserialise(position)
    settings = {"host": "127.0.0.1", "port": maria.port, "user": "root", "password": "", "read_timeout": 30}
    started = time.monotonic()
    stream = BinLogStreamReader(connection_settings=settings, server_id=777, blocking=True, is_mariadb=True,
                                auto_position=start.gtid, only_tables=["bench_item"], enable_logging=False,
                                only_events=[WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent])
    rows = 0
    while rows < expected:
        rows += len(stream.fetchone().rows)
    seconds = time.monotonic() - started
    stream.close()
    return rows, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20k inserts + 5k updates")
    parser.add_argument("--inserts", type=int, help="inserts, then a quarter as many updates (default 200000)")
    parser.add_argument("--batch-size", type=int, default=10000, help="pipeline batch_size (the engine default)")
    args = parser.parse_args()
    inserts = args.inserts or (20_000 if args.quick else 200_000)
    updates = inserts // 4
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start "
          "(other work on the machine skews every figure below)", flush=True)
    maria = pg = None
    try:
        maria = MariaDBServer({"max-binlog-size": "1G"}).init().start()
        pg = PostgresServer(settings=SERVER_SETTINGS).init().start()
        source, target = maria.create_database("bench_src"), pg.create_database("bench_dst")
        my_exec(source, MARIA_DDL)
        pg_exec(target, PG_DDL)
        with tempfile.TemporaryDirectory(prefix="tiersync-bench-") as workdir:
            config = write_node(Path(workdir) / "node.yaml", {"src": source, "dst": target}, [{
                "name": "bench", "source": {"database": "src", "capture": "binlog", "tables": ["bench_item"]},
                "target": {"database": "dst"}, "batch_size": args.batch_size}])
            marked = tiersync("binlog", "mark", "--config", str(config), "--pipeline", "bench")
            out = marked.communicate()[0].decode()
            if marked.returncode != 0:
                sys.exit(out)
            position = out.strip().rsplit(" ", 1)[1]
            statements = [INSERT.format(lo=lo, hi=min(lo + TXN_ROWS - 1, inserts))
                          for lo in range(1, inserts + 1, TXN_ROWS)]
            last = 4 * updates
            statements += [UPDATE.format(lo=lo, hi=min(lo + 4 * TXN_ROWS - 1, last))
                           for lo in range(1, last + 1, 4 * TXN_ROWS)]
            started = time.monotonic()
            my_exec(source, *statements)
            changes = inserts + updates
            print(f"workload: {changes} changes in {len(statements)} transactions written in "
                  f"{time.monotonic() - started:.1f}s", flush=True)
            seconds, rss_kb, _ = run_engine(config)
            raw_rows, raw_seconds = raw_decode(maria, position, changes)
            same = [tuple(str(v) for v in r) for r in my_rows(source, MY_STATE)] == \
                   [tuple(str(v) for v in r) for r in pg_rows(target, PG_STATE)]
            if not same:
                print("source:", my_rows(source, MY_STATE), "\ntarget:", pg_rows(target, PG_STATE))
    finally:
        for server in (maria, pg):
            if server is not None:
                server.destroy()
    e2e, raw = changes / seconds, raw_rows / raw_seconds
    print(f"\ntiersync capture: binlog, batch size {args.batch_size}")
    print(f"  end to end (tiersync run --once): {changes} changes in {seconds:.1f}s = {e2e:,.0f} changes/s, "
          f"peak RSS {rss_kb / 1024:.0f} MB, target {'equals' if same else 'DIFFERS FROM'} the source")
    print(f"  python-mysql-replication raw decode of the same binlog: {raw_rows} rows in {raw_seconds:.1f}s = "
          f"{raw:,.0f} rows/s")
    print(f"  ratio end to end / raw decode: {e2e / raw:.2f}")
    print(f"  required: >= 15,000 changes/s end to end ({'met' if e2e >= 15_000 else 'NOT met'}), "
          f"peak memory < 300 MB ({'met' if rss_kb < 300 * 1024 else 'NOT met'})")
    if not same or raw_rows != changes:
        sys.exit(1)


if __name__ == "__main__":
    main()
