"""Offline bundles between two SQLite nodes: export, import, receipts, hostile bundles, the directory transport."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from engine.config import load_config
from engine.network import TRACE_PULL_SECONDS
from engine.node import run_node
from engine.transport import transport_for
from tests.exchange_nodes import bundle_keys, capture_out, inbox_in, node_file, q, sqlite_db
from tests.helpers import cli, run_once
from transports.directory import DirectoryWatcher

ENTERPRISE = "CREATE TABLE enterprise (id INTEGER PRIMARY KEY, name TEXT, region TEXT)"
QY = "CREATE TABLE qy_jbxx (qyid INTEGER PRIMARY KEY, qymc TEXT, xzqh TEXT)"
UP = {"id": "qyid", "name": "qymc", "region": "xzqh"}
COUNTY, CITY = "county-110101", "city-110100"


def link_keys(tmp: Path, cipher: str = "aes-256-gcm", volume_size: int = 1024) -> dict[str, dict]:
    """The county's and the city's bundle settings for their link, with small volumes and batches."""
    keys = bundle_keys(tmp, COUNTY, CITY, cipher)
    return {node: {**keys[node], "volume_size": volume_size, "batch_size": 20} for node in (COUNTY, CITY)}


def two_nodes(tmp: Path, transport: str = "bundle", cipher: str = "aes-256-gcm", dirs: bool = False,
              volume_size: int = 1024, ftp=None):
    """county → city over an offline link; the city applies what arrives into its qy_jbxx."""
    keys = link_keys(tmp, cipher, volume_size)
    up, down = {}, {}
    if dirs:
        place = ftp.url if ftp else (lambda name: str(tmp / name))
        up = {"directory": place("up"), "watch": place("down")}
        down = {"directory": place("down"), "watch": place("up")}
    route = {"key": ["qyid"], "up": True}
    county = node_file(tmp / "county.yaml", {"id": COUNTY, "tier": "county", "region": "110101", "parent": CITY},
                       {"biz": sqlite_db(tmp / "county.db", ENTERPRISE), "x": f"sqlite:///{tmp}/county-x.db"},
                       {"database": "x", "poll_interval": 0.1, "tables": {"qy_jbxx": route},
                        "links": {CITY: {"role": "parent", "transport": transport, **keys[COUNTY], **up}}},
                       [capture_out("biz", "x", "enterprise", "qy_jbxx", UP)])
    city = node_file(tmp / "city.yaml", {"id": CITY, "tier": "city", "region": "110100"},
                     {"biz": sqlite_db(tmp / "city.db", QY), "x": f"sqlite:///{tmp}/city-x.db"},
                     {"database": "x", "poll_interval": 0.1, "tables": {"qy_jbxx": route},
                      "links": {COUNTY: {"role": "child", "region": "110101", "transport": transport, **keys[CITY],
                                         **down}}},
                     [inbox_in("x", "biz", "qy_jbxx", "qy_jbxx")])
    cli("triggers", "install", "--config", str(county), "--pipeline", "enterprise-out")
    return county, city


def changes(tmp: Path, ids: range, suffix: str = "") -> None:
    with sqlite3.connect(tmp / "county.db") as conn:
        conn.executemany("INSERT OR REPLACE INTO enterprise VALUES (?, ?, '110101')",
                         [(i, f"企业{i}{suffix}") for i in ids])


def same_rows(tmp: Path) -> None:
    assert q(tmp / "city.db", "SELECT qyid, qymc, xzqh FROM qy_jbxx ORDER BY 1") == \
        q(tmp / "county.db", "SELECT id, name, region FROM enterprise ORDER BY 1")


def inbox(tmp: Path) -> list[tuple]:
    return q(tmp / "city-x.db", "SELECT seq FROM tiersync_inbox ORDER BY seq") if (tmp / "city-x.db").exists() else []


def undelivered(tmp: Path) -> list[int]:
    return [s for (s,) in q(tmp / "county-x.db", "SELECT seq FROM tiersync_outbox WHERE acked_at IS NULL ORDER BY seq")]


@pytest.mark.parametrize("cipher", ["aes-256-gcm", "sm4-gcm"])
def test_export_import_receipt_and_repeats(tmp_path, cipher):
    county, city = two_nodes(tmp_path, cipher=cipher)
    changes(tmp_path, range(1, 201))
    run_once(county)  # captured and queued in the outbox; an offline link sends nothing by itself
    pending = undelivered(tmp_path)
    assert len(pending) == 10  # 200 changes in batches of 20
    out = cli("bundle", "export", "--config", str(county), "--link", CITY, "--out", str(tmp_path / "b1.tsb")).output
    assert "exported batches 1–10" in out and "200 changes" in out and cipher in out, out
    volumes = sorted(p.name for p in tmp_path.glob("b1.tsb.*"))
    assert len(volumes) > 2 and volumes[0] == "b1.tsb.001"  # 1 KiB volumes
    assert "nothing to export" in cli("bundle", "export", "--config", str(county), "--link", CITY,
                                      "--out", str(tmp_path / "b-none.tsb")).output
    assert not list(tmp_path.glob("b-none*"))
    assert undelivered(tmp_path) == pending  # exported is not delivered

    out = cli("bundle", "import", "--config", str(city), str(tmp_path / "b1.tsb"),
              "--receipt", str(tmp_path / "r1.receipt")).output
    assert "stored batches 1–10 (10 batches, 200 changes)" in out and "skipped 0" in out, out
    run_once(city)
    same_rows(tmp_path)
    out = cli("bundle", "import", "--config", str(city), str(tmp_path / "b1.tsb")).output  # a repeat is harmless
    assert "stored batches none (0 batches, 0 changes)" in out and "skipped 10 already here (1–10, 200 changes)" in out

    assert "10 newly marked delivered" in cli("bundle", "ack", "--config", str(county),
                                              str(tmp_path / "r1.receipt")).output
    assert undelivered(tmp_path) == []
    assert "0 newly" in cli("bundle", "ack", "--config", str(county), str(tmp_path / "r1.receipt")).output
    trace = cli("trace", "--config", str(county), "--batch", f"{COUNTY}:{CITY}:3").output
    assert "exported" in trace and f"{CITY:<20} received" in trace and "sent" in trace, trace

    # the next export continues after the last; --from re-exports what the receiver already has
    changes(tmp_path, range(150, 241), "改")
    run_once(county)
    out = cli("bundle", "export", "--config", str(county), "--link", CITY, "--out", str(tmp_path / "b2.tsb")).output
    assert "exported batches 11–15" in out, out
    out = cli("bundle", "export", "--config", str(county), "--link", CITY, "--from", "9",
              "--out", str(tmp_path / "b3.tsb")).output
    assert "exported batches 9–15" in out, out
    out = cli("bundle", "import", "--config", str(city), str(tmp_path / "b3.tsb")).output
    assert "stored batches 11–15" in out and "skipped 2 already here (9–10" in out, out
    out = cli("bundle", "import", "--config", str(city), str(tmp_path / "b2.tsb")).output
    assert "stored batches none" in out and "skipped 5" in out, out
    run_once(city)
    same_rows(tmp_path)
    assert {s for (s,) in q(tmp_path / "city-x.db", "SELECT last_seq FROM tiersync_inbox_consumer")} == {15}


def test_lost_bundle_is_exported_again(tmp_path):
    county, city = two_nodes(tmp_path)
    changes(tmp_path, range(1, 61))
    run_once(county)
    cli("bundle", "export", "--config", str(county), "--link", CITY, "--out", str(tmp_path / "lost.tsb"))
    changes(tmp_path, range(61, 81))
    run_once(county)
    assert "exported batches 4–4" in cli("bundle", "export", "--config", str(county), "--link", CITY,
                                         "--out", str(tmp_path / "next.tsb")).output
    # the first bundle never arrives: the next one is out of sequence, and nothing is stored
    result = cli("bundle", "import", "--config", str(city), str(tmp_path / "next.tsb"), expect=1)
    assert "out of sequence" in result.output and "batches 1–3 from county-110101 have not arrived" in result.output
    assert inbox(tmp_path) == []
    out = cli("bundle", "export", "--config", str(county), "--link", CITY, "--again",
              "--out", str(tmp_path / "again.tsb")).output
    assert "exported batches 1–4" in out, out
    cli("bundle", "import", "--config", str(city), str(tmp_path / "again.tsb"))
    run_once(city)
    same_rows(tmp_path)


def flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def refused(city: Path, bundle: Path, tmp: Path, reason: str) -> None:
    result = cli("bundle", "import", "--config", str(city), str(bundle), expect=1)
    assert reason in result.output, result.output
    assert inbox(tmp) == []  # nothing stored


def test_hostile_bundles_are_refused_and_nothing_is_stored(tmp_path):
    county, city = two_nodes(tmp_path)
    changes(tmp_path, range(1, 121))
    run_once(county)
    good = tmp_path / "good.tsb"
    cli("bundle", "export", "--config", str(county), "--link", CITY, "--out", str(good))
    volumes = sorted(tmp_path.glob("good.tsb.0*"))
    assert len(volumes) >= 3

    # a flipped byte in a volume: its checksum fails
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    for path in [good, *volumes]:
        (tampered / path.name).write_bytes(path.read_bytes())
    flip(tampered / volumes[1].name, 100)
    refused(city, tampered / "good.tsb", tmp_path, "fails its checksum")
    # a truncated and a missing volume
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    for path in [good, *volumes]:
        (truncated / path.name).write_bytes(path.read_bytes())
    (truncated / volumes[-1].name).write_bytes(volumes[-1].read_bytes()[:-7])
    refused(city, truncated / "good.tsb", tmp_path, f"missing or truncated: {volumes[-1].name}")
    (truncated / volumes[1].name).unlink()
    refused(city, truncated / "good.tsb", tmp_path, volumes[1].name)
    # the manifest altered (a batch range changed): the signature no longer holds
    altered = tmp_path / "altered"
    altered.mkdir()
    for path in volumes:
        (altered / path.name).write_bytes(path.read_bytes())
    doc = json.loads(good.read_bytes())
    doc["signed"]["batches"] = doc["signed"]["batches"][:-1]
    (altered / "good.tsb").write_text(json.dumps(doc))
    refused(city, altered / "good.tsb", tmp_path, "bad signature")
    # not a manifest at all, and an empty one
    (tmp_path / "junk.tsb").write_bytes(b"\x00\xffnot json")
    refused(city, tmp_path / "junk.tsb", tmp_path, "damaged or not a tiersync file")
    (tmp_path / "empty.tsb").write_bytes(b"")
    refused(city, tmp_path / "empty.tsb", tmp_path, "damaged or not a tiersync file")
    refused(city, tmp_path / "absent.tsb", tmp_path, "no such bundle manifest")
    # addressed to another node: the county cannot import its own bundle
    result = cli("bundle", "import", "--config", str(county), str(good), expect=1)
    assert f"addressed to {CITY}, this node is {COUNTY}" in result.output

    def city_with(**link) -> Path:
        doc = yaml.safe_load(city.read_text())
        doc["exchange"]["links"][COUNTY].update(link)
        path = tmp_path / "city-variant.yaml"
        path.write_text(yaml.safe_dump(doc, allow_unicode=True))
        return path

    # the wrong shared secret: the tags fail
    (tmp_path / "other.secret").write_text("11" * 32)
    refused(city_with(bundle_key_file=str(tmp_path / "other.secret")), good, tmp_path, "does not decrypt")
    # signed by another key than the one the city trusts for the county
    cli("bundle", "keygen", "--out", str(tmp_path / "keys" / "mallory"))
    refused(city_with(peer_public_key=str(tmp_path / "keys" / "mallory.pub")), good, tmp_path, "bad signature")
    # the bundle's cipher differs from the link's
    cli("bundle", "keygen", "--out", str(tmp_path / "keys" / "x"), "--secret", str(tmp_path / "sm4.secret"),
        "--cipher", "sm4-gcm")
    refused(city_with(cipher="sm4-gcm", bundle_key_file=str(tmp_path / "sm4.secret")), good, tmp_path,
            "encrypted with aes-256-gcm, but the link uses sm4-gcm")
    # from a node the city has no bundle link with
    doc = yaml.safe_load(city.read_text())
    doc["exchange"]["links"] = {"county-110102": {**doc["exchange"]["links"][COUNTY], "region": "110102"}}
    stranger = tmp_path / "city-stranger.yaml"
    stranger.write_text(yaml.safe_dump(doc, allow_unicode=True))
    refused(stranger, good, tmp_path, f"from {COUNTY}, which is not a bundle or directory link")
    # and the untouched bundle still imports
    assert "stored batches 1–6" in cli("bundle", "import", "--config", str(city), str(good)).output


def test_a_batch_refused_after_others_were_stored_leaves_nothing_stored(tmp_path):
    """Import stores batches as it decrypts them, one volume in memory; a bundle signed by the sender itself
    (a sender bug) whose fifth batch holds fewer changes than it lists is refused as a whole."""
    from engine.bundle import BundleBatch, write_bundle
    from engine.exchange import now_text
    from engine.offline import link_keys as keys_of

    county, city = two_nodes(tmp_path)
    changes(tmp_path, range(1, 121))
    run_once(county)
    rows = q(tmp_path / "county-x.db", "SELECT seq, batch_id, events, payload FROM tiersync_outbox ORDER BY seq")
    assert len(rows) == 6
    batches = [BundleBatch(seq, batch_id, events + (seq == 5), payload) for seq, batch_id, events, payload in rows]
    path = tmp_path / "bug.tsb"
    manifest = write_bundle(path, COUNTY, CITY, iter(batches), keys_of(load_config(county), CITY), 1024, now_text())
    assert len(manifest.volumes) >= 3 and manifest.batches[4] == [5, f"{COUNTY}:{CITY}:5", 21]
    refused(city, path, tmp_path, "batch 5: holds a different number of changes than the 21 listed")
    cli("bundle", "export", "--config", str(county), "--link", CITY, "--out", str(tmp_path / "good.tsb"))
    assert "stored batches 1–6" in cli("bundle", "import", "--config", str(city), str(tmp_path / "good.tsb")).output
    run_once(city)
    same_rows(tmp_path)


def test_keys_are_never_printed_and_missing_keys_are_config_errors(tmp_path):
    county, _ = two_nodes(tmp_path)
    link = yaml.safe_load(county.read_text())["exchange"]["links"][CITY]
    secret = Path(link["bundle_key_file"]).read_text().strip()
    assert oct(Path(link["signing_key"]).stat().st_mode & 0o777) == "0o600"
    out = cli("bundle", "export", "--config", str(county), "--link", CITY, "--out", str(tmp_path / "x.tsb")).output
    assert secret not in out
    assert secret not in (tmp_path / "county.yaml").read_text()
    result = cli("bundle", "keygen", "--out", link["signing_key"].removesuffix(".key"), expect=1)
    assert "exists; not overwriting" in result.output
    result = cli("bundle", "export", "--config", str(county), "--link", "nowhere", "--out", "x", expect=2)
    assert "'nowhere' is not a link with transport bundle or directory" in result.output
    doc = yaml.safe_load(county.read_text())
    del doc["exchange"]["links"][CITY]["signing_key"]
    county.write_text(yaml.safe_dump(doc, allow_unicode=True))
    result = cli("check", "--config", str(county), "--offline", expect=2)
    assert "needs bundle_key (or bundle_key_file), signing_key and peer_public_key" in result.output


def test_directory_transport_carries_bundles_and_receipts(tmp_path):
    county, city = two_nodes(tmp_path, transport="directory", dirs=True)
    changes(tmp_path, range(1, 101))
    run_once(county)  # capture, then the link sender exports into up/
    manifests = list((tmp_path / "up").glob("*.tsb"))
    assert len(manifests) == 1 and manifests[0].name.startswith(f"{COUNTY}~{CITY}~0000000001~")
    assert not list((tmp_path / "up").glob("*.part"))
    # junk is rejected with its reason
    (tmp_path / "up" / "junk.tsb").write_text("not a bundle")
    run_once(city)  # imports the complete bundle, applies it, writes a receipt into down/
    same_rows(tmp_path)
    assert sorted(p.name for p in (tmp_path / "up" / "rejected").iterdir()) == ["junk.tsb", "junk.tsb.reason"]
    assert "not a tiersync file" in (tmp_path / "up" / "rejected" / "junk.tsb.reason").read_text()
    assert manifests[0].name in {p.name for p in (tmp_path / "up" / "imported").iterdir()}
    assert len(list((tmp_path / "down").glob("*.receipt"))) == 1
    assert len(undelivered(tmp_path)) == 5
    run_once(county)  # takes the receipt
    assert undelivered(tmp_path) == []
    assert list((tmp_path / "down").glob("*.receipt")) == []

    # a later bundle arriving before its predecessor waits for it, then both apply
    changes(tmp_path, range(101, 141))
    run_once(county)
    first = next((tmp_path / "up").glob("*.tsb"))
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    moved = [first, *first.parent.glob(first.name + ".0*")]
    for path in moved:
        path.rename(hidden / path.name)
    changes(tmp_path, range(141, 161))
    run_once(county)
    run_once(city)
    assert len(list((tmp_path / "up").glob("*.tsb"))) == 1  # waiting, not rejected
    assert not (tmp_path / "up" / "rejected" / f"{first.name}.reason").exists()
    volumes = sorted(hidden.glob("*.0*"))
    (hidden / first.name).rename(tmp_path / "up" / first.name)  # the manifest first: still incomplete
    run_once(city)
    assert len(list((tmp_path / "up").glob("*.tsb"))) == 2
    for volume in volumes:
        volume.rename(tmp_path / "up" / volume.name)
    run_once(city)
    same_rows(tmp_path)
    assert list((tmp_path / "up").glob("*.tsb")) == []
    run_once(county)
    assert undelivered(tmp_path) == []
    # a bundle's receipt is written before the city applies it; only a later trace receipt brings "applied" back
    time.sleep(TRACE_PULL_SECONDS + 0.1)
    run_once(city)
    run_once(county)
    trace = cli("trace", "--config", str(county), "--batch", f"{COUNTY}:{CITY}:1").output
    assert f"{CITY:<20} applied" in trace and f"{CITY:<20} received" in trace, trace
    # retention: imported copies go once older than bundle_days (default 7); rejected ones stay for a person
    config = load_config(city)
    watcher = DirectoryWatcher(config, next(iter(config.exchange.links)), threading.Event())
    imported = sorted((tmp_path / "up" / "imported").iterdir())
    assert len(imported) > 2 and watcher._prune_imported(now=time.time()) == 0
    assert watcher._prune_imported(now=time.time() + 8 * 86400) == len(imported)
    assert list((tmp_path / "up" / "imported").iterdir()) == []
    assert len(list((tmp_path / "up" / "rejected").iterdir())) == 2


def set_link(path: Path, **settings) -> None:
    """Change the settings of the node's (only) link in its YAML."""
    doc = yaml.safe_load(path.read_text())
    next(iter(doc["exchange"]["links"].values())).update(settings)
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))


def test_directory_link_exports_again_when_no_receipt_comes(tmp_path, caplog):
    from engine.network import exchange_store
    from engine.offline import resend_due

    county, city = two_nodes(tmp_path, transport="directory", dirs=True)
    changes(tmp_path, range(1, 61))
    run_once(county)  # bundle 1–3
    lost = next((tmp_path / "up").glob("*.tsb"))
    for path in [lost, *lost.parent.glob(lost.name + ".0*")]:
        path.unlink()  # lost on the way
    changes(tmp_path, range(61, 81))
    run_once(county)  # bundle 4
    run_once(city)  # bundle 4 waits at the gap
    assert inbox(tmp_path) == [] and len(list((tmp_path / "up").glob("*.tsb"))) == 1
    run_once(county)  # the default resend_after (600 s) has not passed: nothing is exported again
    assert len(list((tmp_path / "up").glob("*.tsb"))) == 1

    set_link(county, resend_after=0.5)
    time.sleep(0.6)
    run_once(county)  # no receipt covered batch 1 for 0.5 s: every undelivered batch exported again
    names = sorted(p.name for p in (tmp_path / "up").glob("*.tsb"))
    assert len(names) == 2 and names[0].startswith(f"{COUNTY}~{CITY}~0000000001~"), names
    # the wait doubles: a second resend is due 1 s (2 × resend_after) after this export, not 0.5 s
    config = load_config(county)
    store = exchange_store(config)
    try:
        [exported] = [datetime.fromisoformat(r.at) for r in store.trace([f"{COUNTY}:{CITY}:1"])
                      if r.status == "exported" and r.detail == names[0]]
        assert resend_due(config, store, CITY, exported + timedelta(seconds=0.9)) is None
        batch, waited = resend_due(config, store, CITY, exported + timedelta(seconds=1.1))
        assert batch.seq == 1 and waited >= 1.0
    finally:
        store.close()

    with caplog.at_level(logging.INFO, logger="transports.directory"):
        run_once(city)  # the resent bundle stores 1–4; the waiting one is skipped whole
    imports = [r.getMessage() for r in caplog.records if "stored batches" in r.getMessage()]
    assert len(imports) == 2 and "stored batches 1–4 (4 batches, 80 changes)" in imports[0], imports
    assert "stored batches none (0 batches, 0 changes) in the inbox; skipped 1 already here (4," in imports[1]
    same_rows(tmp_path)
    assert {s for (s,) in q(tmp_path / "city-x.db", "SELECT last_seq FROM tiersync_inbox_consumer")} == {4}
    assert list((tmp_path / "up").glob("*.tsb")) == [] and not (tmp_path / "up" / "rejected").exists()
    run_once(county)  # the receipts: everything delivered, and nothing is due again
    assert undelivered(tmp_path) == []
    config = load_config(county)
    store = exchange_store(config)
    try:
        assert resend_due(config, store, CITY, datetime.now(timezone.utc) + timedelta(days=1)) is None
    finally:
        store.close()


def test_directory_link_that_cannot_write_retries_instead_of_stopping(tmp_path):
    """A directory that is away (an unmounted share, a full disk) is a transient failure: the link sender
    and the watcher retry with backoff instead of their threads stopping for good."""
    from engine.errors import TransientError
    from engine.network import exchange_store

    county, city = two_nodes(tmp_path, transport="directory", dirs=True)
    changes(tmp_path, range(1, 41))
    config = load_config(county)
    assert not run_node(config, ["enterprise-out"], once=True, stop=threading.Event(), network=False)
    (tmp_path / "up").write_text("the share is not mounted")
    store = exchange_store(config)
    try:
        with pytest.raises(TransientError, match="cannot write the bundle"):
            transport_for(config, CITY).export_pending(store)
        (tmp_path / "up").unlink()
        assert transport_for(config, CITY).export_pending(store) == 2
    finally:
        store.close()
    assert len(undelivered(tmp_path)) == 2

    # the receiving side: its receipt cannot be written; the bundle stays to be taken again, nothing is lost

    (tmp_path / "down").write_text("the share is not mounted")
    city_config = load_config(city)
    city_store = exchange_store(city_config)
    city_store.ensure()
    try:
        watcher = DirectoryWatcher(city_config, COUNTY, threading.Event())
        with pytest.raises(TransientError, match="down"):
            watcher.step(city_store)
        assert len(list((tmp_path / "up").glob("*.tsb"))) == 1  # not moved to imported/ without its receipt
        (tmp_path / "down").unlink()
        assert watcher.step(city_store) == 1
    finally:
        city_store.close()
    assert len(list((tmp_path / "down").glob("*.receipt"))) == 1
    run_once(city)
    run_once(county)
    same_rows(tmp_path)
    assert undelivered(tmp_path) == []


@pytest.fixture
def ftp_server(tmp_path):
    from tests.harness.ftp import FtpServer

    server = FtpServer(tmp_path / "ftp").start()
    yield server
    server.stop()


def test_directory_link_over_ftp(tmp_path, ftp_server):
    county, city = two_nodes(tmp_path, transport="directory", dirs=True, ftp=ftp_server)
    assert ftp_server.password not in cli("check", "--config", str(county), "--offline").output
    config = load_config(county)
    described = transport_for(config, next(iter(config.exchange.links))).describe()
    assert described.startswith("directory ftp://tiersync:***@"), described
    changes(tmp_path, range(1, 101))
    run_once(county)  # exported into the spool, uploaded: volumes, then the manifest
    on_server = sorted(p.name for p in (tmp_path / "ftp" / "up").iterdir())
    assert len(on_server) > 2 and sum(n.endswith(".tsb") for n in on_server) == 1 and not any(
        n.endswith(".part") for n in on_server)
    assert not [p for p in (tmp_path / "spool" / CITY / "out").iterdir() if p.is_file()]  # sent, not kept
    run_once(city)  # downloaded (and removed from the server), imported, applied; its receipt uploaded
    same_rows(tmp_path)
    assert list((tmp_path / "ftp" / "up").iterdir()) == []
    assert [p.suffix for p in (tmp_path / "ftp" / "down").iterdir()] == [".receipt"]
    assert len(undelivered(tmp_path)) == 5
    run_once(county)  # the receipt comes back through the server
    assert undelivered(tmp_path) == []
    assert list((tmp_path / "ftp" / "down").iterdir()) == []
    # the server away: the export waits in the spool and goes once it is back
    changes(tmp_path, range(101, 121))
    ftp_server.stop()
    with pytest.raises(AssertionError, match="gave up"):
        run_once(county)
    assert len([p for p in (tmp_path / "spool" / CITY / "out").glob("*.tsb")]) == 1
    ftp_server.start()
    for path in (county, city, county):
        cfg = yaml.safe_load(path.read_text())  # the restarted server listens on a new port
        link = next(iter(cfg["exchange"]["links"].values()))
        link["directory"] = ftp_server.url(Path(urlsplit(link["directory"]).path).name)
        link["watch"] = ftp_server.url(Path(urlsplit(link["watch"]).path).name)
        path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
        run_once(path)
    same_rows(tmp_path)
    assert undelivered(tmp_path) == []
