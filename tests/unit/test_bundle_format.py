"""The bundle format on its own: round trips in both ciphers, volumes bound to their bundle and place."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from engine.batchcodec import encode_batch
from engine.bundle import (
    BundleBatch,
    BundleKeys,
    BundleRefused,
    bundle_files,
    missing_volumes,
    read_bundle,
    read_manifest,
    signed,
    write_bundle,
)
from engine.errors import TiersyncError
from engine.event import ChangeEvent, Op, TableId


def batches(n: int, first: int = 1) -> list[BundleBatch]:
    out = []
    for seq in range(first, first + n):
        events = [ChangeEvent(Op.CREATE, TableId(None, "qy_jbxx"), (i,), None,
                              {"qyid": i, "qymc": os.urandom(40).hex()}, i, origin="a")
                  for i in range(seq * 10, seq * 10 + 10)]
        out.append(BundleBatch(seq, f"a:b:{seq}", 10, encode_batch(events)))
    return out


def keys(cipher: str = "aes-256-gcm", secret: bytes | None = None):
    signing = Ed25519PrivateKey.generate()
    secret = secret or os.urandom(32 if cipher == "aes-256-gcm" else 16)
    return (BundleKeys(cipher, secret, signing=signing),
            BundleKeys(cipher, secret, peer=signing.public_key()), signing)


def read(path):
    manifest, doc, signature = read_manifest(path)
    return manifest, doc, signature


@pytest.mark.parametrize("cipher", ["aes-256-gcm", "sm4-gcm"])
def test_round_trip_in_volumes(tmp_path, cipher):
    send, receive, _ = keys(cipher)
    written = batches(12)
    manifest = write_bundle(tmp_path / "b.tsb", "a", "b", iter(written), send, 1024, "now")
    assert len(manifest.volumes) > 3 and all(v["bytes"] <= 1024 for v in manifest.volumes)
    assert list(read_bundle(tmp_path / "b.tsb", *read(tmp_path / "b.tsb"), receive)) == written
    assert not list(tmp_path.glob("*.part"))
    sealed = b"".join(p.read_bytes() for p in tmp_path.glob("b.tsb.*"))
    assert not any(b.payload[8:40] in sealed for b in written)  # the batches' bytes are nowhere in clear


def test_nothing_to_write_writes_no_file(tmp_path):
    send, _, _ = keys()
    assert write_bundle(tmp_path / "b.tsb", "a", "b", iter([]), send, 1024, "now") is None
    assert list(tmp_path.iterdir()) == []


def test_key_sizes_are_checked():
    with pytest.raises(TiersyncError, match="sm4-gcm needs a 16-byte key"):
        BundleKeys("sm4-gcm", os.urandom(32))


def resign(path, signing, change) -> None:
    """A manifest changed and signed again with the sender's own key (a sender bug, or a stolen key)."""
    doc = json.loads(path.read_bytes())["signed"]
    change(doc)
    path.write_bytes(signed(doc, signing))


def test_a_volume_of_another_bundle_or_at_another_place_fails_its_tag(tmp_path):
    send, receive, signing = keys()
    one, two = tmp_path / "one.tsb", tmp_path / "two.tsb"
    write_bundle(one, "a", "b", iter(batches(6)), send, 1024, "now")
    write_bundle(two, "a", "b", iter(batches(6)), send, 1024, "now")
    # volume 1 of bundle two placed as volume 1 of bundle one, with a manifest that vouches for it
    (tmp_path / "one.tsb.001").write_bytes((tmp_path / "two.tsb.001").read_bytes())
    digest = hashlib.sha256((tmp_path / "one.tsb.001").read_bytes()).hexdigest()
    resign(one, signing, lambda d: d["volumes"][0].update(sha256=digest))
    with pytest.raises(BundleRefused, match="one.tsb.001 does not decrypt"):
        list(read_bundle(one, *read(one), receive))
    # volumes 1 and 2 of bundle two swapped, likewise vouched for
    v1, v2 = (tmp_path / "two.tsb.001").read_bytes(), (tmp_path / "two.tsb.002").read_bytes()
    (tmp_path / "two.tsb.001").write_bytes(v2)
    (tmp_path / "two.tsb.002").write_bytes(v1)

    def swap(d):
        d["volumes"][0]["sha256"], d["volumes"][1]["sha256"] = d["volumes"][1]["sha256"], d["volumes"][0]["sha256"]
        d["volumes"][0]["bytes"], d["volumes"][1]["bytes"] = d["volumes"][1]["bytes"], d["volumes"][0]["bytes"]
    resign(two, signing, swap)
    with pytest.raises(BundleRefused, match="does not decrypt"):
        list(read_bundle(two, *read(two), receive))


def test_a_manifest_cannot_name_files_outside_its_directory(tmp_path):
    send, receive, signing = keys()
    path = tmp_path / "b.tsb"
    write_bundle(path, "a", "b", iter(batches(2)), send, 1024, "now")
    for name in ("../b.tsb.001", "..", "/etc/passwd.001", ".hidden.001"):
        resign(path, signing, lambda d, n=name: d["volumes"][0].update(name=n))
        with pytest.raises(BundleRefused, match="bad volume entry"):
            read_manifest(path)


def test_batches_other_than_listed_or_not_consecutive_are_refused(tmp_path):
    send, receive, signing = keys()
    path = tmp_path / "b.tsb"
    write_bundle(path, "a", "b", iter(batches(3)), send, 1 << 20, "now")
    resign(path, signing, lambda d: d["batches"].__setitem__(1, [2, "a:b:2", 11]))
    with pytest.raises(BundleRefused, match="other batches than the manifest lists"):
        list(read_bundle(path, *read(path), receive))
    gappy = batches(1) + batches(1, first=3)
    write_bundle(path, "a", "b", iter(gappy), send, 1 << 20, "now")
    with pytest.raises(BundleRefused, match="batches 1 and 3 are not consecutive"):
        list(read_bundle(path, *read(path), receive))


def test_missing_volumes_and_the_files_of_a_bundle(tmp_path):
    send, _, _ = keys()
    path = tmp_path / "b.tsb"
    manifest = write_bundle(path, "a", "b", iter(batches(6)), send, 1024, "now")
    assert missing_volumes(path, manifest) == []
    (tmp_path / "b.tsb.002").unlink()
    assert missing_volumes(path, manifest) == ["b.tsb.002"]
    assert bundle_files(path, manifest)[0] == path and len(bundle_files(path, manifest)) == len(manifest.volumes) + 1
