"""directory: offline bundles carried through directories (a mount, or a folder an FTP or sneaker process moves).

Sending: the link sender exports the batches after the last export as one
bundle into the link's ``directory`` (each file written to ``.part`` and
renamed, the manifest last, so a reader never sees half a bundle). Exported is
not delivered: batches count as delivered when the receiver's signed receipt
arrives in this node's ``watch`` directory.

``directory`` and ``watch`` may be ``ftp://`` URLs: then both ends work on a
local spool and transports/ftp.py carries the files to and from the server.

Receiving: :class:`DirectoryWatcher` looks in the link's ``watch`` directory.
A bundle is imported once its manifest and every volume it lists are there at
full size, oldest sequence first; a bundle that starts after a missing one
waits for it. Imported files go to ``watch/imported/`` and a receipt is written
into ``directory`` for the sender; refused ones (damaged, forged, misaddressed,
volumes still missing after ``complete_timeout``) go to ``watch/rejected/``
with a ``.reason`` file, and the reason is logged. Receipts from the other
node are taken the same way. Every few seconds, when it changed, a receipt also
carries back the trace of the peer's recent batches (applied here, forwarded,
and what the nodes further on reported): the end-to-end acknowledgement.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from engine.bundle import BundleRefused, bundle_files, missing_volumes, read_manifest, write_atomically
from engine.config import Config, redact_url
from engine.errors import TerminalError, TransientError
from engine.exchange import ExchangeStore, OutgoingBatch, TraceRow
from engine.offline import (
    OutOfSequence,
    accept_receipt,
    export_link,
    import_bundle,
    local_dirs,
    receipt,
    receipt_name,
    resend_due,
    write_receipt,
)
from engine.transport import Transport, retry_delay
from transports.ftp import FtpPlace, is_ftp

log = logging.getLogger(__name__)


class DirectoryTransport(Transport):
    """The sending end: exports instead of delivering; receipts (read by the watcher) mark delivery."""

    offline = True

    def export_pending(self, store: ExchangeStore) -> int:
        """Export what is new; first, when no receipt came for ``resend_after``, every undelivered batch again
        (a bundle lost or rejected on the way: the receiver skips the batches it already has)."""
        due = resend_due(self.config, store, self.link_name)
        if due is not None:
            report = export_link(self.config, store, self.link_name, None, again=True)
            log.warning("link %s: no receipt has covered batch %s in %.0fs since its last export; %s", self.link_name,
                        due[0].seq, due[1], report.describe() if report else "nothing left to export")
        else:
            report = export_link(self.config, store, self.link_name, None)
            if report is not None:
                log.info("link %s: %s", self.link_name, report.describe())
        carry_out(self.config, self.link_name)
        return len(report.manifest.batches) if report else 0

    def send(self, batch: OutgoingBatch) -> bool:
        raise TerminalError("a directory link exports bundles; it does not deliver batches one by one")

    def trace(self, batch_ids: list[str]) -> list[TraceRow]:
        return []  # the receiver's trace comes back inside its receipts

    def describe(self) -> str:
        return f"directory {redact_url(str(self.link.directory))}"  # an ftp:// location may hold a password


def carry_out(config: Config, link_name: str) -> None:
    """For an ftp:// ``directory``: send what the spool holds (bundles, receipts) to the server."""
    link = config.exchange.links[link_name]
    if is_ftp(link.directory):
        FtpPlace(link.directory, link.timeout).upload(local_dirs(config, link_name)[0])


def carry_in(config: Config, link_name: str) -> None:
    """For an ftp:// ``watch``: fetch what the server holds into the spool."""
    link = config.exchange.links[link_name]
    if is_ftp(link.watch):
        FtpPlace(link.watch, link.timeout).download(local_dirs(config, link_name)[1])


def _move(files: list[Path], folder: Path) -> None:
    """Move a bundle's files into ``folder``, the manifest first (orphaned volumes are never picked up)."""
    folder.mkdir(exist_ok=True)
    for path in files:
        if path.exists():
            path.replace(folder / path.name)


class DirectoryWatcher:
    """Imports the bundles and takes the receipts that arrive in one link's ``watch`` directory."""

    def __init__(self, config: Config, link_name: str, stop: threading.Event):
        from engine.network import exchange_store

        self.config, self.link_name, self.stop = config, link_name, stop
        self.link = config.exchange.links[link_name]
        self.outgoing, self.watch = local_dirs(config, link_name)
        self._connect = lambda: exchange_store(config)
        self._waiting: set[str] = set()  # bundles already logged as waiting
        self._traced = ("", 0.0)  # the trace last sent back in a receipt, and when
        self.imported = self.rejected = 0
        self._pruned_at = 0.0  # when imported/ was last pruned (monotonic)

    def run(self, once: bool = False) -> None:
        failures = 0
        store = None
        while not self.stop.is_set():
            try:
                if store is None:
                    store = self._connect()
                moved = self.step(store)
                failures = 0
                if once and not moved:
                    break
                if not moved:
                    self.stop.wait(self.config.exchange.poll_interval)
            except TransientError as exc:
                failures += 1
                delay = retry_delay(f"link {self.link_name}", failures, exc, once)
                log.warning("directory %s: %s — retrying in %.1fs", self.watch, exc, delay)
                if store is not None:
                    store.close()
                store = None
                self.stop.wait(delay)
        if store is not None:
            store.close()

    def step(self, store: ExchangeStore) -> int:
        """One look at the directory; how many files were taken (imported, accepted or rejected).

        A file system failure (a share away, a full disk) is transient: :meth:`run` retries with backoff. A
        bundle is moved to ``imported/`` only after its receipt is written, so a retry imports it again
        (everything skipped) and writes the receipt then.
        """
        try:
            return self._look(store)
        except OSError as exc:
            raise TransientError(f"directory link {self.link_name}: {exc}") from None

    def _look(self, store: ExchangeStore) -> int:
        carry_in(self.config, self.link_name)
        self.watch.mkdir(parents=True, exist_ok=True)
        done = 0
        for path in sorted(self.watch.glob("*.receipt")):
            try:
                link, through, marked = accept_receipt(self.config, store, path)
                log.info("directory %s: receipt from %s: delivered through %s (%s newly)", self.watch, link,
                         through, marked)
                _move([path], self.watch / "imported")
            except BundleRefused as exc:
                self._reject([path], str(exc))
            done += 1
        manifests = []
        for path in self.watch.glob("*.tsb"):
            try:
                manifests.append((read_manifest(path)[0], path))
            except BundleRefused as exc:
                self._reject([path], str(exc))
                done += 1
        for manifest, path in sorted(manifests, key=lambda m: (m[0].sender, m[0].first_seq, m[1].name)):
            if missing_volumes(path, manifest):
                if time.time() - path.stat().st_mtime > self.link.complete_timeout:
                    self._reject(bundle_files(path, manifest), f"{path.name}: volumes still missing after "
                                 f"{self.link.complete_timeout:.0f}s: {', '.join(missing_volumes(path, manifest))}")
                    done += 1
                continue  # still arriving
            try:
                report = import_bundle(self.config, store, path)
            except OutOfSequence as exc:
                if path.name not in self._waiting:
                    log.warning("directory %s: %s — waiting for the missing bundle", self.watch, exc)
                    self._waiting.add(path.name)
                continue
            except BundleRefused as exc:
                self._reject(bundle_files(path, manifest), str(exc))
                done += 1
                continue
            log.info("directory %s: %s", self.watch, report.describe())
            if self.outgoing is not None:
                write_receipt(self.config, report, self.outgoing / receipt_name(
                    self.config.node.id, manifest.sender, report.through, manifest.bundle_id[:8]))
            _move(bundle_files(path, manifest), self.watch / "imported")
            self._traced = (self._traced[0], time.monotonic())  # the receipt just written carries the trace
            self._waiting.discard(path.name)
            self.imported += 1
            done += 1
        self._send_trace(store)
        if self.outgoing is not None:
            carry_out(self.config, self.link_name)  # the receipts just written
        self._prune_imported()
        return done

    def _prune_imported(self, now: float | None = None) -> int:
        """Every ``retention.interval``: remove files in ``watch/imported/`` older than ``retention.bundle_days``
        (their batches are stored and receipted; the copies are kept that long for audit). How many went."""
        retention = self.config.exchange.retention
        if time.monotonic() - self._pruned_at < retention.interval and now is None:
            return 0
        self._pruned_at = time.monotonic()
        cutoff = (now or time.time()) - retention.bundle_days * 86400
        removed = 0
        folder = self.watch / "imported"
        for path in folder.iterdir() if folder.is_dir() else ():
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        if removed:
            log.info("directory %s: pruned %d imported files older than %g days", self.watch, removed,
                     retention.bundle_days)
        return removed

    def _send_trace(self, store: ExchangeStore) -> None:
        """Now and then, a receipt carrying how far the peer's recent batches went here and beyond (applied,
        forwarded, and what the next nodes reported), when that changed: the end-to-end acknowledgement."""
        from engine.network import TRACE_PULL_SECONDS

        if self.outgoing is None or time.monotonic() - self._traced[1] < TRACE_PULL_SECONDS:
            return
        node, peer = self.config.node.id, self.link_name
        through = store.last_received(peer)
        rows = store.trace([f"{peer}:{node}:{s}" for s in range(max(1, through - 99), through + 1)]) if through else []
        digest = repr([(r.batch_id, r.node, r.status, r.detail) for r in rows])
        if rows and digest != self._traced[0]:
            self.outgoing.mkdir(parents=True, exist_ok=True)
            write_atomically(self.outgoing / receipt_name(node, peer, through, f"t{time.time_ns()}"),
                             receipt(self.config, peer, through, rows, "trace"))
        self._traced = (digest if rows else self._traced[0], time.monotonic())

    def _reject(self, files: list[Path], reason: str) -> None:
        log.error("directory %s: rejected %s: %s", self.watch, files[0].name, reason)
        folder = self.watch / "rejected"
        folder.mkdir(exist_ok=True)
        write_atomically(folder / (files[0].name + ".reason"), (reason + "\n").encode())
        _move(files, folder)
        self.rejected += 1
