"""An FTP server as the carrier of a directory link: ``directory`` or ``watch`` given as ``ftp://`` URLs.

The directory transport works on local directories; for an FTP location it
keeps a local spool (``spool``, default ``spool/<link>`` beside the node's
YAML) and moves files between the spool and the server:

* :meth:`FtpPlace.upload` sends the spool's finished files (volumes, then
  manifests, then receipts), each stored as ``NAME.part`` and renamed on the
  server, and removes the local copy once the rename succeeded; a file left
  over by a crash is sent again (the receiver skips what it has).
* :meth:`FtpPlace.download` fetches the server's finished files (never
  ``.part``) into the spool (``.part``, flushed, renamed, the directory
  flushed) and deletes each from the server only after that, so a crash at any point loses nothing; the
  directory watcher then imports from the spool as from any directory.

Uses Python's ftplib; ``ftps://`` uses FTP over TLS (``FTP_TLS``, protected data channel).
"""

from __future__ import annotations

import ftplib
import os
import threading
from pathlib import Path
from urllib.parse import unquote, urlsplit

from engine.bundle import sync_dir
from engine.errors import TerminalError, TransientError

_ORDER = {"volume": 0, "manifest": 1, "receipt": 2}
_LOCKS: dict[Path, threading.Lock] = {}  # one mover per spool directory (a link's sender and watcher share one)
_LOCKS_LOCK = threading.Lock()


def _lock(spool: Path) -> threading.Lock:
    with _LOCKS_LOCK:
        return _LOCKS.setdefault(spool.resolve(), threading.Lock())


def is_ftp(location: str | None) -> bool:
    return bool(location) and location.split("://", 1)[0] in ("ftp", "ftps")


def _kind(name: str) -> str | None:
    if name.endswith(".part") or name.startswith("."):
        return None
    if name.endswith(".tsb"):
        return "manifest"
    if name.endswith(".receipt"):
        return "receipt"
    stem, _, number = name.rpartition(".")
    return "volume" if stem.endswith(".tsb") and number.isdigit() else None


class FtpPlace:
    """One directory on an FTP server."""

    def __init__(self, url: str, timeout: float):
        parts = urlsplit(url)
        self.tls = parts.scheme == "ftps"
        self.host, self.port = parts.hostname or "", parts.port or 21
        self.user, self.password = unquote(parts.username or "anonymous"), unquote(parts.password or "")
        self.path = unquote(parts.path) or "/"
        self.timeout = timeout
        self.shown = f"{parts.scheme}://{self.host}:{self.port}{self.path}"  # never the password

    def _session(self) -> ftplib.FTP:
        try:
            ftp = ftplib.FTP_TLS(timeout=self.timeout) if self.tls else ftplib.FTP(timeout=self.timeout)
            ftp.connect(self.host, self.port)
            ftp.login(self.user, self.password)
            if self.tls:
                ftp.prot_p()
            ftp.cwd(self.path)
            return ftp
        except ftplib.error_perm as exc:
            raise TerminalError(f"{self.shown}: the server refused: {exc}") from None
        except (OSError, EOFError, ftplib.Error) as exc:
            raise TransientError(f"{self.shown}: {type(exc).__name__}: {exc}") from None

    def upload(self, spool: Path) -> int:
        """Send every finished file in ``spool``; how many."""
        with _lock(spool):
            return self._upload(spool)

    def _upload(self, spool: Path) -> int:
        files = sorted((p for p in spool.iterdir() if p.is_file() and _kind(p.name)),
                       key=lambda p: (_ORDER[_kind(p.name)], p.name)) if spool.is_dir() else []
        if not files:
            return 0
        ftp = self._session()
        try:
            for path in files:
                with open(path, "rb") as data:
                    ftp.storbinary(f"STOR {path.name}.part", data)
                ftp.rename(f"{path.name}.part", path.name)
                path.unlink(missing_ok=True)
            return len(files)
        except (OSError, EOFError, ftplib.Error) as exc:
            raise TransientError(f"{self.shown}: uploading: {type(exc).__name__}: {exc}") from None
        finally:
            _quit(ftp)

    def download(self, spool: Path) -> int:
        """Move every finished file from the server into ``spool``; how many."""
        ftp = self._session()
        try:
            names = sorted((n for n in (os.path.basename(n) for n in ftp.nlst()) if _kind(n)),
                           key=lambda n: (_ORDER[_kind(n)], n))
            spool.mkdir(parents=True, exist_ok=True)
            for name in names:
                part = spool / f"{name}.part"
                with open(part, "wb") as out:
                    ftp.retrbinary(f"RETR {name}", out.write)
                    out.flush()
                    os.fsync(out.fileno())
                part.replace(spool / name)
                sync_dir(spool)  # the rename survives a power loss before the server's copy is gone
                ftp.delete(name)
            return len(names)
        except (OSError, EOFError, ftplib.Error) as exc:
            raise TransientError(f"{self.shown}: downloading: {type(exc).__name__}: {exc}") from None
        finally:
            _quit(ftp)


def _quit(ftp: ftplib.FTP) -> None:
    try:
        ftp.quit()
    except (OSError, EOFError, ftplib.Error):
        ftp.close()
