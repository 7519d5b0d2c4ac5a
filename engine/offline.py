"""Offline exchange: a link's outbox exported as a bundle, a bundle imported into the inbox, receipts back.

* :func:`export_link` writes the link's batches after the last export (or from
  a given sequence, or every undelivered one again) as one bundle and then
  records how far it exported. Exported is not delivered: a batch stays in the
  outbox, undelivered, until the receiver's signed receipt comes back.
* :func:`import_bundle` verifies a bundle (signature, checksums, GCM tags,
  addressee, sender, batch ids, consecutive sequences) and stores its new
  batches in the inbox in one transaction, refusing a gap; batches this node
  already has are skipped and reported.
* :func:`receipt` is the receiver's signed statement of how far it has the
  sender's batches; :func:`accept_receipt` marks them delivered at the sender.

The bundle format is :mod:`engine.bundle`; the directory transport
(``transports/directory.py``) and ``tiersync bundle`` both use these.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from .batchcodec import CorruptBatch, batch_lines
from .bundle import (
    RECEIPT_FORMAT,
    BundleBatch,
    BundleKeys,
    BundleRefused,
    Manifest,
    load_private_key,
    load_public_key,
    load_secret,
    read_bundle,
    read_manifest,
    signed,
    unsigned_view,
    verify,
    write_atomically,
    write_bundle,
)
from .config import Config, LinkConfig
from .errors import ConfigError, TiersyncError, TransientError
from .exchange import ExchangeStore, OutgoingBatch, SequenceGap, TraceRow, now_text

BUNDLE_TRANSPORTS = ("bundle", "directory")
RESEND_BACKOFF_LIMIT = 16  # the wait before exporting undelivered batches again doubles up to this × resend_after


class OutOfSequence(BundleRefused):
    """The bundle starts after a batch this node has not received: an earlier bundle is missing."""


def bundle_link(config: Config, name: str) -> LinkConfig:
    links = config.exchange.links if config.exchange else {}
    link = links.get(name)
    if link is None or link.transport not in BUNDLE_TRANSPORTS:
        bundles = [n for n, lk in links.items() if lk.transport in BUNDLE_TRANSPORTS]
        raise ConfigError([f"{name!r} is not a link with transport bundle or directory; such links: "
                           f"{', '.join(bundles) or 'none'}"])
    return link


def link_keys(config: Config, name: str) -> BundleKeys:
    """The keys of a bundle link, read from its files or its environment-provided secret (never printed)."""
    link = bundle_link(config, name)
    base = Path(config.base_dir)
    if link.bundle_key is not None:
        secret_text = link.bundle_key.get_secret_value()
    elif link.bundle_key_file:
        try:
            secret_text = (base / link.bundle_key_file).read_text()
        except OSError as exc:
            raise TiersyncError(f"link {name}: cannot read bundle_key_file: {exc.strerror}") from None
    else:
        raise TiersyncError(f"link {name}: no bundle_key or bundle_key_file")
    signing = load_private_key(base / link.signing_key) if link.signing_key else None
    peer = load_public_key(base / link.peer_public_key) if link.peer_public_key else None
    return BundleKeys(link.cipher, load_secret(secret_text), signing, peer)


def local_dirs(config: Config, name: str) -> tuple[Path | None, Path | None]:
    """Where a directory link writes bundles and receipts, and where it finds what arrives: its ``directory``
    and ``watch``, or for ``ftp://`` locations its local spool's ``out`` and ``in`` (transports/ftp.py moves
    files between the spool and the server)."""
    link = bundle_link(config, name)
    base = Path(config.base_dir)
    spool = base / (link.spool or f"spool/{name}")

    def local(location: str | None, side: str) -> Path | None:
        if not location:
            return None
        return spool / side if "://" in location else base / location
    return local(link.directory, "out"), local(link.watch, "in")


def ranges(seqs: list[int]) -> str:
    """Sequences as ranges: ``1–5, 8``."""
    parts: list[str] = []
    start = prev = None
    for seq in sorted(seqs):
        if prev is not None and seq == prev + 1:
            prev = seq
            continue
        if start is not None:
            parts.append(f"{start}–{prev}" if prev != start else f"{start}")
        start = prev = seq
    if start is not None:
        parts.append(f"{start}–{prev}" if prev != start else f"{start}")
    return ", ".join(parts) or "none"


# ---------------------------------------------------------------- export (sending side)

@dataclass
class ExportReport:
    path: Path
    manifest: Manifest

    def describe(self) -> str:
        m = self.manifest
        size = sum(v["bytes"] for v in m.volumes)
        return (f"exported batches {m.first_seq}–{m.last_seq} of link {m.receiver} ({len(m.batches)} batches, "
                f"{m.events} changes) to {self.path} in {len(m.volumes)} volume(s), {size} bytes, {m.cipher}")


def bundle_name(sender: str, receiver: str, first: int, bundle_hint: str) -> str:
    """A bundle's file name in a directory: sorts by sender, receiver and first sequence."""
    return f"{sender}~{receiver}~{first:010d}~{bundle_hint}.tsb"


def export_link(config: Config, store: ExchangeStore, link_name: str, out: Path | None,
                from_seq: int | None = None, again: bool = False) -> ExportReport | None:
    """Write the link's pending batches as one bundle; None when there is nothing to export.

    Default: the batches after the last export. ``again``: every batch not yet delivered (a lost bundle).
    ``from_seq``: from that sequence on, delivered or not (the receiver skips what it has).
    """
    link = bundle_link(config, link_name)
    keys = link_keys(config, link_name)
    if from_seq is not None:
        after = from_seq - 1
    elif again:
        first = store.pending(link_name, 1)
        after = first[0].seq - 1 if first else store.exported_through(link_name)
    else:
        after = store.exported_through(link_name)
    head = store.outbox_after(link_name, after, 1)
    if not head:
        return None
    if from_seq is not None and head[0].seq != from_seq:
        raise TiersyncError(f"batch {from_seq} of link {link_name} is no longer in the outbox (delivered and purged); "
                            f"the earliest kept is {head[0].seq}")
    node = config.node.id

    def batches() -> Iterator[BundleBatch]:
        done = after
        while True:
            page = store.outbox_after(link_name, done, 200)
            if not page:
                return
            for b in page:
                yield BundleBatch(b.seq, b.batch_id, b.events, b.payload)
            done = page[-1].seq

    bundle_id = uuid.uuid4().hex
    if out is None:
        if not link.directory:
            raise TiersyncError(f"link {link_name} has no directory: name the bundle file (--out)")
        out = local_dirs(config, link_name)[0] / bundle_name(node, link_name, head[0].seq, bundle_id[:8])
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        manifest = write_bundle(out, node, link_name, batches(), keys, link.volume_size, now_text(), bundle_id)
    except OSError as exc:  # transient: a directory link's sender retries with backoff instead of stopping
        raise TransientError(f"cannot write the bundle {out}: {exc.strerror or exc}") from None
    at = now_text()
    store.mark_exported(link_name, max(store.exported_through(link_name), manifest.last_seq),
                        [TraceRow(b[1], node, "exported", at, out.name) for b in manifest.batches])
    return ExportReport(out, manifest)


def resend_due(config: Config, store: ExchangeStore, link_name: str,
               now: datetime | None = None) -> tuple[OutgoingBatch, float] | None:
    """The link's oldest undelivered batch and how long it waited, when it is time to export it again; else None.

    Due when the batch was exported and no receipt has covered it for the link's ``resend_after`` seconds since
    its last export; the wait doubles with each export of it (``resend_after``, 2×, 4×, … up to
    ``RESEND_BACKOFF_LIMIT``×). The exports are counted from the batch's own "exported" trace rows, so the
    schedule survives a restart. A batch never exported is not due: the ordinary export takes it.
    """
    link = bundle_link(config, link_name)
    oldest = store.pending(link_name, 1)
    if not oldest:
        return None
    exports = sorted(datetime.fromisoformat(row.at) for row in store.trace([oldest[0].batch_id])
                     if row.status == "exported" and row.node == config.node.id and row.batch_id == oldest[0].batch_id)
    if not exports:
        return None
    wait = link.resend_after * min(2 ** (len(exports) - 1), RESEND_BACKOFF_LIMIT)
    waited = ((now or datetime.now(timezone.utc)) - exports[-1]) / timedelta(seconds=1)
    return (oldest[0], waited) if waited >= wait else None


# ---------------------------------------------------------------- import (receiving side)

@dataclass
class ImportReport:
    path: Path
    manifest: Manifest
    stored: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    stored_events: int = 0
    skipped_events: int = 0
    through: int = 0
    trace: list[TraceRow] = field(default_factory=list)

    def describe(self) -> str:
        m = self.manifest
        return (f"bundle {self.path.name} from {m.sender}: stored batches {ranges(self.stored)} "
                f"({len(self.stored)} batches, {self.stored_events} changes) in the inbox; skipped "
                f"{len(self.skipped)} already here ({ranges(self.skipped)}, {self.skipped_events} changes); "
                f"this node now has {m.sender}'s batches through {self.through}")


def import_bundle(config: Config, store: ExchangeStore, path: Path) -> ImportReport:
    """Verify the bundle at ``path`` and store its batches in the inbox (all or nothing); what happened."""
    manifest, doc, signature = read_manifest(path)
    node = config.node.id
    if manifest.receiver != node:
        raise BundleRefused(f"{path}: addressed to {manifest.receiver}, this node is {node}")
    try:
        keys = link_keys(config, manifest.sender)
    except ConfigError:
        raise BundleRefused(f"{path}: from {manifest.sender}, which is not a bundle or directory link "
                            f"of this node") from None
    batches = read_bundle(path, manifest, doc, signature, keys)

    def checked() -> Iterator[tuple[int, str, bytes, int]]:  # stored as they are read: one volume in memory
        for batch in batches:
            expected = f"{manifest.sender}:{node}:{batch.seq}"
            if batch.batch_id != expected:
                raise BundleRefused(f"{path}: batch id {batch.batch_id!r} where {expected!r} belongs")
            try:
                if len(batch_lines(batch.payload)) != batch.events:
                    raise CorruptBatch(f"holds a different number of changes than the {batch.events} listed")
            except CorruptBatch as exc:
                raise BundleRefused(f"{path}: batch {batch.seq}: {exc}") from None
            yield batch.seq, batch.batch_id, batch.payload, batch.events
    try:  # one transaction: a batch refused half way leaves nothing stored
        stored, skipped = store.receive_in_sequence(manifest.sender, checked(), node)
    except SequenceGap as exc:
        raise OutOfSequence(f"{path}: out of sequence: {exc}") from None
    events = {seq: count for seq, _, count in manifest.batches}
    return ImportReport(path, manifest, stored, skipped, sum(events[s] for s in stored),
                        sum(events[s] for s in skipped), store.last_received(manifest.sender),
                        store.trace([batch_id for _, batch_id, _ in manifest.batches]))


# ---------------------------------------------------------------- receipts

def receipt(config: Config, peer: str, through: int, trace: list[TraceRow], about: str = "") -> bytes:
    """This node's signed receipt for ``peer``: it has the peer's batches through ``through``; its trace of them."""
    keys = link_keys(config, peer)
    if keys.signing is None:
        raise TiersyncError(f"link {peer}: no signing_key to sign the receipt")
    doc = {"format": RECEIPT_FORMAT, "sender": config.node.id, "receiver": peer, "through": through,
           "at": now_text(), "about": about, "trace": [[r.batch_id, r.node, r.status, r.at, r.detail] for r in trace]}
    return signed(doc, keys.signing)


def bundle_receipt(config: Config, report: ImportReport) -> bytes:
    """The receipt for an imported bundle: the sender may count every batch through ``through`` delivered."""
    return receipt(config, report.manifest.sender, report.through, report.trace,
                   f"bundle {report.manifest.bundle_id}: stored {ranges(report.stored)}, "
                   f"skipped {ranges(report.skipped)}")


def receipt_name(node: str, peer: str, through: int, tag: str) -> str:
    return f"{node}~{peer}~through-{through:010d}~{tag}.receipt"


def write_receipt(config: Config, report: ImportReport, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, bundle_receipt(config, report))


def accept_receipt(config: Config, store: ExchangeStore, path: Path) -> tuple[str, int, int]:
    """Verify a receipt and mark the batches it covers delivered: (link, through, newly marked)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BundleRefused(f"{path}: cannot read it: {exc.strerror}") from None
    doc, signature = unsigned_view(data, str(path))
    if doc.get("format") != RECEIPT_FORMAT:
        raise BundleRefused(f"{path}: not a tiersync receipt")
    link = str(doc.get("sender"))
    if doc.get("receiver") != config.node.id:
        raise BundleRefused(f"{path}: a receipt for {doc.get('receiver')}, this node is {config.node.id}")
    try:
        keys = link_keys(config, link)
    except ConfigError:
        raise BundleRefused(f"{path}: from {link}, which is not a bundle or directory link of this node") from None
    verify(doc, signature, keys.peer, str(path))
    through = doc.get("through")
    if not isinstance(through, int) or through < 0:
        raise BundleRefused(f"{path}: bad 'through' in the receipt")
    marked = store.delivered_through(link, through, config.node.id, f"bundle receipt from {link}")
    rows = [TraceRow(*row) for row in doc.get("trace", []) if isinstance(row, list) and len(row) == 5]
    store.add_trace([r for r in rows if r.node != config.node.id])
    return link, through, marked
