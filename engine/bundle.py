"""Offline bundles: a link's batches as signed, encrypted volume files that any carrier can move.

A bundle named ``FILE`` is a manifest ``FILE`` and volumes ``FILE.001``, ``FILE.002``, …:

* The plain stream is one record per batch: sequence, event count, batch id
  and the batch's payload (already zlib-compressed JSON envelopes,
  :mod:`engine.batchcodec`), so a bundle carries exactly the bytes every other
  transport carries.
* The stream is cut into volumes of at most ``volume_size`` bytes; each is
  encrypted on its own with AES-256-GCM (or SM4-GCM where national crypto is
  required) under the link's secret key, with a random 96-bit nonce and the
  bundle id and volume number as associated data (so a volume of another
  bundle, or one moved to another place, fails its tag).
* The manifest (JSON) names the bundle id, sender, receiver, cipher, the
  batches (sequence, id, events) and each volume's size and SHA-256. It is
  signed with the sender's Ed25519 key for the link; the receiver holds the
  public key. The manifest itself is not encrypted (it shows node ids and
  sequence numbers, never data).

Writing is crash-safe: each volume and then the manifest are written to
``.part`` files, flushed to disk and renamed, the manifest last, so a bundle exists only
once it is complete. Reading verifies the signature, then every volume's size
and checksum, then each GCM tag, and raises :class:`BundleRefused` with the
reason at the first problem, before anything is handed over.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import MissingDriver, TiersyncError

try:
    from cryptography.exceptions import InvalidSignature, InvalidTag
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
except ModuleNotFoundError:  # pragma: no cover - depends on the installation
    raise MissingDriver("offline bundles need the cryptography package: pip install 'tiersync[bundle]'") from None

FORMAT = "tiersync-bundle/1"
RECEIPT_FORMAT = "tiersync-receipt/1"
CIPHERS = {"aes-256-gcm": (algorithms.AES, 32), "sm4-gcm": (algorithms.SM4, 16)}  # name: (algorithm, key bytes)
NONCE, TAG = 12, 16
_RECORD = struct.Struct(">QIHI")  # seq, events, len(batch id), len(payload)
MANIFEST_LIMIT = 64 * 1024 * 1024  # a manifest larger than this is not one of ours
_VOLUME_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.~-]*\.[0-9]{3,}$")  # a plain file name beside the manifest


class BundleRefused(TiersyncError):
    """The bundle (or receipt) is not accepted: damaged, incomplete, forged, misaddressed or out of sequence."""


@dataclass(frozen=True)
class BundleKeys:
    """One end's keys for a link: the shared secret, its own signing key, the other end's public key."""

    cipher: str
    secret: bytes
    signing: Ed25519PrivateKey | None = None
    peer: Ed25519PublicKey | None = None

    def __post_init__(self):
        if self.cipher not in CIPHERS:
            raise TiersyncError(f"unknown cipher {self.cipher!r}; one of {', '.join(CIPHERS)}")
        wanted = CIPHERS[self.cipher][1]
        if len(self.secret) != wanted:
            raise TiersyncError(f"{self.cipher} needs a {wanted}-byte key ({wanted * 2} hex digits), "
                                f"the link's key has {len(self.secret)} bytes")


@dataclass(frozen=True)
class BundleBatch:
    seq: int
    batch_id: str
    events: int
    payload: bytes


@dataclass
class Manifest:
    bundle_id: str
    sender: str
    receiver: str
    cipher: str
    created_at: str
    batches: list[list] = field(default_factory=list)  # [seq, batch id, events]
    volumes: list[dict] = field(default_factory=list)  # {name, bytes, sha256}

    @property
    def first_seq(self) -> int:
        return self.batches[0][0] if self.batches else 0

    @property
    def last_seq(self) -> int:
        return self.batches[-1][0] if self.batches else 0

    @property
    def events(self) -> int:
        return sum(b[2] for b in self.batches)

    def as_dict(self) -> dict:
        return {"format": FORMAT, "bundle_id": self.bundle_id, "sender": self.sender, "receiver": self.receiver,
                "cipher": self.cipher, "created_at": self.created_at, "batches": self.batches,
                "volumes": self.volumes}


# ---------------------------------------------------------------- keys

def load_secret(text: str) -> bytes:
    """A link's secret key from its hex (or base64) text."""
    text = text.strip()
    try:
        return bytes.fromhex(text)
    except ValueError:
        pass
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise TiersyncError("the link's bundle key is neither hex nor base64") from None


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise TiersyncError(f"{path}: not a readable Ed25519 private key ({type(exc).__name__})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise TiersyncError(f"{path}: not an Ed25519 private key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise TiersyncError(f"{path}: not a readable Ed25519 public key ({type(exc).__name__})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise TiersyncError(f"{path}: not an Ed25519 public key")
    return key


def generate_key_pair(prefix: str | Path) -> tuple[Path, Path]:
    """Write ``PREFIX.key`` (private, mode 0600) and ``PREFIX.pub``; refuse to overwrite either."""
    private, public = Path(f"{prefix}.key"), Path(f"{prefix}.pub")
    for path in (private, public):
        if path.exists():
            raise TiersyncError(f"{path} exists; not overwriting a key")
    key = Ed25519PrivateKey.generate()
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def generate_secret(path: str | Path, cipher: str) -> Path:
    """Write a random secret key for ``cipher`` as hex to ``path`` (mode 0600); refuse to overwrite."""
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(os.urandom(CIPHERS[cipher][1]).hex() + "\n")
    return path


# ---------------------------------------------------------------- signed documents (manifests, receipts)

def _canonical(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def signed(doc: dict, key: Ed25519PrivateKey) -> bytes:
    return json.dumps({"signed": doc, "signature": base64.b64encode(key.sign(_canonical(doc))).decode()},
                      ensure_ascii=False, indent=1).encode()


def unsigned_view(data: bytes, what: str) -> tuple[dict, bytes]:
    """The document inside a signed file and its signature, not yet verified."""
    try:
        outer = json.loads(data)
        doc, signature = outer["signed"], base64.b64decode(outer["signature"], validate=True)
        if not isinstance(doc, dict):
            raise TypeError("not an object")
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleRefused(f"{what} is damaged or not a tiersync file ({type(exc).__name__}: {exc})") from None
    return doc, signature


def verify(doc: dict, signature: bytes, key: Ed25519PublicKey, what: str) -> None:
    try:
        key.verify(signature, _canonical(doc))
    except InvalidSignature:
        raise BundleRefused(f"{what}: bad signature (not signed by the key configured for "
                            f"{doc.get('sender', '?')}, or altered after signing)") from None


def write_atomically(path: Path, data: bytes) -> None:
    """``path`` appears whole or not at all (written to ``.part``, flushed, renamed, directory flushed)."""
    part = path.with_name(path.name + ".part")
    with open(part, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(part, path)
    sync_dir(path.parent)


def sync_dir(directory: Path) -> None:
    """Make the names in ``directory`` (a rename into it) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- writing

def _aad(bundle_id: str, index: int) -> bytes:
    """What each volume's tag also covers: a volume of another bundle or at another place fails it
    (the signed manifest lists every volume, so a dropped last volume is noticed there)."""
    return f"{FORMAT}|{bundle_id}|{index}".encode()


def _encrypt(keys: BundleKeys, plain: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE)
    encryptor = Cipher(CIPHERS[keys.cipher][0](keys.secret), modes.GCM(nonce)).encryptor()
    encryptor.authenticate_additional_data(aad)
    return nonce + encryptor.update(plain) + encryptor.finalize() + encryptor.tag


def _decrypt(keys: BundleKeys, data: bytes, aad: bytes) -> bytes:
    nonce, body, tag = data[:NONCE], data[NONCE:-TAG], data[-TAG:]
    decryptor = Cipher(CIPHERS[keys.cipher][0](keys.secret), modes.GCM(nonce, tag)).decryptor()
    decryptor.authenticate_additional_data(aad)
    return decryptor.update(body) + decryptor.finalize()


def volume_path(manifest_path: Path, index: int) -> Path:
    return manifest_path.with_name(f"{manifest_path.name}.{index:03d}")


def write_bundle(path: str | Path, sender: str, receiver: str, batches: Iterator[BundleBatch], keys: BundleKeys,
                 volume_size: int, created_at: str, bundle_id: str | None = None) -> Manifest | None:
    """Write the batches as a bundle at ``path``; None (and no file) when there are none.

    Each volume is sealed and written as soon as it is full, so memory holds one
    volume at a time and plain data never touches the disk.
    """
    if keys.signing is None:
        raise TiersyncError("no signing key for this link (signing_key:)")
    path = Path(path)
    if volume_size <= NONCE + TAG + _RECORD.size:
        raise TiersyncError(f"volume size {volume_size} is too small")
    manifest = Manifest(bundle_id or uuid.uuid4().hex, sender, receiver, keys.cipher, created_at)
    plain_size = volume_size - NONCE - TAG
    buffer = bytearray()

    def seal(final: bool) -> None:
        while len(buffer) >= plain_size or (final and buffer):
            index = len(manifest.volumes) + 1
            sealed = _encrypt(keys, bytes(buffer[:plain_size]), _aad(manifest.bundle_id, index))
            del buffer[:plain_size]
            target = volume_path(path, index)
            write_atomically(target, sealed)
            manifest.volumes.append({"name": target.name, "bytes": len(sealed),
                                     "sha256": hashlib.sha256(sealed).hexdigest()})

    for batch in batches:
        bid = batch.batch_id.encode()
        buffer += _RECORD.pack(batch.seq, batch.events, len(bid), len(batch.payload)) + bid + batch.payload
        manifest.batches.append([batch.seq, batch.batch_id, batch.events])
        seal(False)
    if not manifest.batches:
        return None
    seal(True)
    write_atomically(path, signed(manifest.as_dict(), keys.signing))  # last: the bundle now exists
    return manifest


# ---------------------------------------------------------------- reading

def read_manifest(path: str | Path) -> tuple[Manifest, dict, bytes]:
    """The manifest at ``path`` (unverified: the caller picks the key by its sender), its document and signature."""
    path = Path(path)
    try:
        if path.stat().st_size > MANIFEST_LIMIT:
            raise BundleRefused(f"{path}: too large for a bundle manifest")
        data = path.read_bytes()
    except FileNotFoundError:
        raise BundleRefused(f"{path}: no such bundle manifest") from None
    except OSError as exc:
        raise BundleRefused(f"{path}: cannot read it: {exc}") from None
    doc, signature = unsigned_view(data, f"{path}")
    try:
        if doc.get("format") != FORMAT:
            raise ValueError(f"format {doc.get('format')!r}, expected {FORMAT!r}")
        manifest = Manifest(str(doc["bundle_id"]), str(doc["sender"]), str(doc["receiver"]), str(doc["cipher"]),
                            str(doc["created_at"]), list(doc["batches"]), list(doc["volumes"]))
        for seq, batch_id, events in manifest.batches:
            if not (isinstance(seq, int) and isinstance(events, int) and isinstance(batch_id, str)):
                raise ValueError("a batch entry is not [seq, id, events]")
        for volume in manifest.volumes:
            if not isinstance(volume["name"], str) or not _VOLUME_NAME.match(volume["name"]) or \
                    not isinstance(volume["bytes"], int):
                raise ValueError(f"bad volume entry {volume!r}")
            str(volume["sha256"])
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleRefused(f"{path}: not a tiersync bundle manifest ({exc})") from None
    return manifest, doc, signature


def missing_volumes(path: str | Path, manifest: Manifest) -> list[str]:
    """Volumes not (yet) there at their full size: what a carrier has not delivered."""
    path = Path(path)
    out = []
    for volume in manifest.volumes:
        target = path.with_name(volume["name"])
        if not target.is_file() or target.stat().st_size != volume["bytes"]:
            out.append(volume["name"])
    return out


def read_bundle(path: str | Path, manifest: Manifest, doc: dict, signature: bytes,
                keys: BundleKeys) -> Iterator[BundleBatch]:
    """The batches of a bundle, one volume in memory at a time. The signature, the cipher and every volume's
    presence and checksum are verified before this returns; each volume is decrypted, and each batch checked
    against the manifest's list and its predecessor, as the batches are taken. :class:`BundleRefused` says
    what is wrong, here or while iterating."""
    path = Path(path)
    if keys.peer is None:
        raise TiersyncError(f"no public key of {manifest.sender} for this link (peer_public_key:)")
    verify(doc, signature, keys.peer, f"{path}")
    if manifest.cipher != keys.cipher:
        raise BundleRefused(f"{path}: encrypted with {manifest.cipher}, but the link uses {keys.cipher}")
    if not manifest.volumes:
        raise BundleRefused(f"{path}: the manifest lists no volumes")
    missing = missing_volumes(path, manifest)
    if missing:
        raise BundleRefused(f"{path}: volume(s) missing or truncated: {', '.join(missing)}")
    for volume in manifest.volumes:  # every checksum before any decryption
        digest = hashlib.sha256()
        with open(path.with_name(volume["name"]), "rb") as data:
            while chunk := data.read(1 << 20):
                digest.update(chunk)
        if digest.hexdigest() != volume["sha256"]:
            raise BundleRefused(f"{path}: volume {volume['name']} fails its checksum (damaged or altered)")
    return _batches(path, manifest, keys)


def _batches(path: Path, manifest: Manifest, keys: BundleKeys) -> Iterator[BundleBatch]:
    """Decrypt volume after volume and cut the batch records out of the stream (a record may span volumes)."""
    listed = iter(manifest.batches)
    previous: BundleBatch | None = None
    rest = b""  # the start of a record that goes on in the next volume
    for index, volume in enumerate(manifest.volumes, start=1):
        try:
            plain = _decrypt(keys, path.with_name(volume["name"]).read_bytes(), _aad(manifest.bundle_id, index))
        except (InvalidTag, ValueError):
            raise BundleRefused(f"{path}: volume {volume['name']} does not decrypt: the link's bundle key differs "
                                f"from the sender's") from None
        stream = rest + plain if rest else plain
        del plain
        view = memoryview(stream)
        at = 0
        while len(stream) - at >= _RECORD.size:
            seq, events, id_len, size = _RECORD.unpack_from(view, at)
            end = at + _RECORD.size + id_len + size
            if end > len(stream):
                break
            batch_id = bytes(view[at + _RECORD.size:at + _RECORD.size + id_len]).decode(errors="replace")
            batch = BundleBatch(seq, batch_id, events, bytes(view[end - size:end]))
            if next(listed, None) != [seq, batch_id, events]:
                raise BundleRefused(f"{path}: the volumes hold other batches than the manifest lists")
            if previous is not None and seq != previous.seq + 1:
                raise BundleRefused(f"{path}: batches {previous.seq} and {seq} are not consecutive")
            previous = batch
            yield batch
            at = end
        rest = bytes(view[at:])
        view.release()
    if rest:
        where = "a record header" if len(rest) < _RECORD.size else f"batch {_RECORD.unpack_from(rest)[0]}"
        raise BundleRefused(f"{path}: the batch stream ends inside {where}")
    if next(listed, None) is not None:
        raise BundleRefused(f"{path}: the volumes hold other batches than the manifest lists")


def bundle_files(path: str | Path, manifest: Manifest) -> list[Path]:
    """The manifest and the volumes it lists under its own name (for moving a bundle as a whole; an
    unverified manifest cannot make another bundle's files move with it)."""
    path = Path(path)
    return [path] + [path.with_name(v["name"]) for v in manifest.volumes if v["name"].startswith(path.name + ".")]
