"""Offline bundle export and import of N changes: time and size on disk, against plain gzip of the same JSON.

Setup (not timed): N change events of an exchange table (8 columns: ints, decimal, Chinese text,
timestamp, region code) are queued in a county's SQLite exchange database as the outbox does it
(transport batches of --batch-size, zlib-compressed JSON envelopes).

tiersync, timed:
  export: `export_link` reads the link's batches from the outbox, writes them as one bundle (AES-256-GCM
          or SM4-GCM volumes of --volume-mb, each flushed to disk, an Ed25519-signed manifest) and records
          the export;
  import: `import_bundle` verifies signature, checksums and tags, checks every batch, and stores all
          batches in the city's inbox in one transaction.
baseline, timed, same run: the very same JSON envelopes (one per line) written through gzip (level 6) to
  one file flushed to disk, then read back and decompressed (no database, no crypto, no checks).
Sizes: raw JSON, the bundle (volumes + manifest), the gzip file; and the import's peak memory (tracemalloc, a
second untimed import into a fresh exchange database): a few volumes, whatever the bundle's size.

Run:  .venv/bin/python bench/bundle_throughput.py [--changes 1000000] [--batch-size 1000] [--cipher sm4-gcm]
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COUNTY, CITY = "county-110101", "city-110100"


def node_yaml(directory: Path, node: str, peer: str, own_key: str, peer_key: str, role: str, args) -> Path:
    path = directory / f"{node}.yaml"
    region = '\n    region: "110101"' if role == "child" else ""
    parent = f", parent: {peer}" if role == "parent" else ""
    tier = "county" if node == COUNTY else "city"
    path.write_text(f"""node: {{id: {node}, tier: {tier}, region: "{node[-6:]}"{parent}}}
databases:
  x: {{url: "sqlite:///{directory}/{node}-x.db"}}
exchange:
  database: x
  tables: {{qy_jbxx: {{key: [qyid], up: true}}}}
  links:
   {peer}:
    role: {role}{region}
    transport: bundle
    cipher: {args.cipher}
    bundle_key_file: {directory}/link.secret
    signing_key: {directory}/{own_key}.key
    peer_public_key: {directory}/{peer_key}.pub
    volume_size: {args.volume_mb * 1024 * 1024}
    batch_size: {args.batch_size}
""")
    return path


def events(n: int):
    from engine.event import ChangeEvent, Op, TableId

    table = TableId(None, "qy_jbxx")
    base = datetime(2024, 1, 1, tzinfo=timezone.utc)
    for i in range(1, n + 1):
        row = {"qyid": i, "qymc": f"东城区第{i}号企业有限公司", "xzqh": f"{110101 + i % 3}",
               "zczb": Decimal(i % 99991) / 4, "hydm": f"C{i % 43:02d}", "zt": i % 5,
               "clrq": base + timedelta(seconds=i), "lxdh": f"1380000{i % 10000:04d}"}
        yield ChangeEvent(op=Op.CREATE if i % 5 else Op.UPDATE, table=table, key=(i,), before=None, after=row,
                          seq=i, txid=i // 50, origin=COUNTY, path=(COUNTY,), captured_at=base + timedelta(seconds=i))


def setup(directory: Path, args):
    from engine.bundle import generate_key_pair, generate_secret
    from engine.config import load_config
    from engine.network import exchange_store

    generate_secret(directory / "link.secret", args.cipher)
    generate_key_pair(directory / "county")
    generate_key_pair(directory / "city")
    county = load_config(node_yaml(directory, COUNTY, CITY, "county", "city", "parent", args))
    city = load_config(node_yaml(directory, CITY, COUNTY, "city", "county", "child", args))
    store = exchange_store(county)
    store.ensure()
    batch: list = []
    for event in events(args.changes):
        batch.append(event)
        if len(batch) == args.batch_size * 20:
            store.queue("bench", "x:1", len(batch), COUNTY,
                        [(CITY, batch[i:i + args.batch_size]) for i in range(0, len(batch), args.batch_size)])
            batch = []
    if batch:
        store.queue("bench", "x:1", len(batch), COUNTY,
                    [(CITY, batch[i:i + args.batch_size]) for i in range(0, len(batch), args.batch_size)])
    return county, city, store


def json_lines(store) -> list[bytes]:
    from engine.batchcodec import batch_lines

    lines: list[bytes] = []
    after = 0
    while page := store.outbox_after(CITY, after, 500):
        for batch in page:
            lines += batch_lines(batch.payload)
        after = page[-1].seq
    return lines


def import_memory(directory: Path, bundle: Path) -> int:
    """The peak of Python's allocations while the bundle is imported once more, into a fresh exchange database
    (untimed: tracemalloc slows what it watches)."""
    import tracemalloc

    from engine.config import load_config
    from engine.network import exchange_store
    from engine.offline import import_bundle

    again = directory / f"{CITY}-again.yaml"
    again.write_text((directory / f"{CITY}.yaml").read_text().replace(f"{CITY}-x.db", f"{CITY}-again-x.db"))
    config = load_config(again)
    store = exchange_store(config)
    store.ensure()
    tracemalloc.start()
    try:
        import_bundle(config, store, bundle)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--volume-mb", type=int, default=64)
    parser.add_argument("--cipher", choices=["aes-256-gcm", "sm4-gcm"], default="aes-256-gcm")
    args = parser.parse_args()

    from engine.network import exchange_store
    from engine.offline import export_link, import_bundle

    with tempfile.TemporaryDirectory(prefix="bundle-bench-") as tmp:
        directory = Path(tmp)
        started = time.perf_counter()
        county, city, store = setup(directory, args)
        print(f"setup: {args.changes:,} changes queued in {time.perf_counter() - started:.1f}s "
              f"(batches of {args.batch_size}, {args.cipher}, volumes of {args.volume_mb} MiB)")

        started = time.perf_counter()
        report = export_link(county, store, CITY, directory / "out.tsb")
        export_s = time.perf_counter() - started
        bundle_bytes = sum(p.stat().st_size for p in directory.glob("out.tsb*"))

        city_store = exchange_store(city)
        city_store.ensure()
        started = time.perf_counter()
        imported = import_bundle(city, city_store, directory / "out.tsb")
        import_s = time.perf_counter() - started
        assert len(imported.stored) == len(report.manifest.batches) and imported.stored_events == args.changes
        import_peak = import_memory(directory, directory / "out.tsb")

        lines = json_lines(store)
        raw_bytes = sum(len(line) + 1 for line in lines)
        started = time.perf_counter()
        with open(directory / "baseline.json.gz", "wb") as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6) as out:
                for line in lines:
                    out.write(line + b"\n")
            raw.flush()
            os.fsync(raw.fileno())
        gzip_write_s = time.perf_counter() - started
        gzip_bytes = (directory / "baseline.json.gz").stat().st_size
        started = time.perf_counter()
        with gzip.open(directory / "baseline.json.gz", "rb") as back:
            count = sum(1 for _ in back)
        gzip_read_s = time.perf_counter() - started
        assert count == args.changes

    mib = 1024 * 1024
    print(f"raw JSON envelopes:     {raw_bytes / mib:9.1f} MiB")
    print(f"tiersync bundle:        {bundle_bytes / mib:9.1f} MiB in {len(report.manifest.volumes)} volume(s) "
          f"({bundle_bytes / raw_bytes:.3f} of raw)")
    print(f"baseline gzip -6:       {gzip_bytes / mib:9.1f} MiB ({gzip_bytes / raw_bytes:.3f} of raw)")
    print(f"size ratio bundle/gzip: {bundle_bytes / gzip_bytes:.2f}")
    print(f"export:  tiersync {export_s:6.2f}s ({args.changes / export_s:,.0f} changes/s)   "
          f"baseline gzip write {gzip_write_s:6.2f}s ({args.changes / gzip_write_s:,.0f}/s)   "
          f"ratio {export_s / gzip_write_s:.2f}")
    print(f"import:  tiersync {import_s:6.2f}s ({args.changes / import_s:,.0f} changes/s)   "
          f"baseline gzip read  {gzip_read_s:6.2f}s ({args.changes / gzip_read_s:,.0f}/s)   "
          f"ratio {import_s / gzip_read_s:.2f}")
    print(f"import memory: peak {import_peak / mib:.1f} MiB of Python allocations for a {bundle_bytes / mib:.1f} MiB "
          f"bundle in volumes of {args.volume_mb} MiB")


if __name__ == "__main__":
    main()
