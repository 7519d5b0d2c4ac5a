"""A running node's run files: how `tiersync reload` finds the node's processes and hears their answer.

Every ``tiersync run`` process writes ``<state dir>/<node>-<pid>.json`` (its
pid, the start time the operating system gives the process, the config file)
and removes it (and its request and answer files) when it ends; the state
directory is ``node.state_dir`` (by default ``.tiersync`` next to the config
file). A reload is a request file of its own (``<node>-<pid>.reload.<id>.json``:
who asked, when) and a SIGHUP; on a SIGHUP the process takes every request
file there (signals sent close together may arrive as one), each pipeline
reloads its rules at its next batch boundary, and the process writes what they
answered to ``<node>-<pid>.answer.<id>.json``, one per request, as they answer.
A pid file whose process is gone, or whose pid now belongs to another process
(its start time differs), is stale and ignored.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .config import Config
from .errors import TerminalError

log = logging.getLogger(__name__)


def state_dir(config: Config) -> Path:
    """Where the node's run files live (``node.state_dir``, relative to the config file's directory)."""
    return Path(config.base_dir) / (config.node.state_dir or ".tiersync")


def _started(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), telling a reused pid from the original."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive, and not ours to signal (the check below says so)
    return True


def _write_atomically(path: Path, doc: dict) -> None:
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps(doc, indent=2, default=str))
    os.replace(temporary, path)


def _modified(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@dataclass
class NodeProcess:
    """One running ``tiersync run`` process of a node, as its pid file describes it."""

    pid: int
    config: str
    pipelines: list[str]
    since: str
    files: Path

    def request_file(self, request_id: str) -> Path:
        return self.files.with_suffix(f".reload.{request_id}.json")

    def answer_file(self, request_id: str) -> Path:
        return self.files.with_suffix(f".answer.{request_id}.json")

    def request_files(self) -> list[Path]:
        """The reload requests waiting for this process, oldest first."""
        return sorted(self.files.parent.glob(f"{self.files.stem}.reload.*.json"), key=_modified)


class RunFiles:
    """The pid file of this process, and the reload requests it receives (used by :func:`engine.node.run_node`).

    ``reachable`` says whether the process answers SIGHUP (its handler is installed, before the pid file is
    written); a process that cannot keeps no pid file, since `tiersync reload`'s SIGHUP would terminate it.
    """

    def __init__(self, config: Config, pipelines: list[str]):
        directory = state_dir(config)
        self.process = NodeProcess(os.getpid(), config.source_file, list(pipelines),
                                   datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                   directory / f"{config.node.id}-{os.getpid()}.json")
        self.reachable = True

    def __enter__(self) -> RunFiles:
        process = self.process
        if not self.reachable:
            return self
        try:
            process.files.parent.mkdir(parents=True, exist_ok=True)
            _write_atomically(process.files, {"pid": process.pid, "started": _started(process.pid),
                                              "config": process.config, "pipelines": process.pipelines,
                                              "since": process.since})
        except OSError as exc:  # the node runs on; only `tiersync reload` cannot find it (SIGHUP still works)
            log.warning("cannot write the pid file %s (%s): `tiersync reload` will not find this process; "
                        "set node.state_dir to a writable directory", process.files, exc)
        return self

    def __exit__(self, *_exc) -> None:
        stem = self.process.files.stem
        for path in [self.process.files, *self.process.files.parent.glob(f"{stem}.reload.*.json"),
                     *self.process.files.parent.glob(f"{stem}.answer.*.json")]:
            path.unlink(missing_ok=True)

    def take_requests(self) -> list[tuple[dict, Path | None]]:
        """Every reload request that came with a SIGHUP, each with the file its answer goes to (several requests
        may share one signal; a bare SIGHUP has none: it is described as such and answered in the log only)."""
        taken = []
        for path in self.process.request_files():
            request = _read(path)
            path.unlink(missing_ok=True)
            if request is not None and isinstance(request.get("id"), str) and request["id"].isalnum():
                taken.append((request, self.process.answer_file(request["id"])))
        return taken or [({"id": "", "by": "a SIGHUP without `tiersync reload`",
                           "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}, None)]


@dataclass
class ReloadRound:
    """One reload request: the answers of the pipelines it asked, written to the answer file as they come."""

    request: dict
    pipelines: list[str]
    answer_file: Path | None = None
    answers: dict[str, list[str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, pipeline: str, lines: list[str]) -> None:
        with self._lock:
            self.answers[pipeline] = lines
            if self.answer_file is not None:
                try:
                    _write_atomically(self.answer_file, self.document())
                except OSError as exc:
                    log.warning("cannot write the reload answer %s: %s", self.answer_file, exc)

    def document(self) -> dict:
        waiting = [p for p in self.pipelines if p not in self.answers]
        return {"id": self.request.get("id", ""), "by": self.request.get("by", ""), "done": not waiting,
                "waiting": waiting, "answers": self.answers}


# ------------------------------------------------------------------ the asking side (`tiersync reload`)

def running_processes(config: Config) -> list[NodeProcess]:
    """The node's live ``tiersync run`` processes; stale pid files are removed."""
    found = []
    directory = state_dir(config)
    for path in sorted(directory.glob(f"{config.node.id}-*.json")):
        if not path.stem.removeprefix(f"{config.node.id}-").isdigit():
            continue  # a request or answer file
        doc = _read(path)
        if doc is None or not isinstance(doc.get("pid"), int):
            continue
        pid = doc["pid"]
        if not _alive(pid) or (doc.get("started") and _started(pid) not in (None, doc["started"])):
            path.unlink(missing_ok=True)  # the process is gone (killed without cleaning up), or the pid was reused
            continue
        found.append(NodeProcess(pid, doc.get("config", ""), doc.get("pipelines", []), doc.get("since", ""), path))
    return found


def ask_reload(process: NodeProcess, by: str) -> str:
    """Leave a reload request for ``process`` and send it SIGHUP; returns the request's id."""
    request_id = uuid.uuid4().hex
    _write_atomically(process.request_file(request_id), {"id": request_id, "by": by,
                                             "at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    try:
        os.kill(process.pid, signal.SIGHUP)
    except PermissionError:
        raise TerminalError(f"not allowed to signal the node's process {process.pid} (run as its user)") from None
    except ProcessLookupError:
        raise TerminalError(f"the node's process {process.pid} ended before it could be asked") from None
    return request_id


def wait_for_answer(process: NodeProcess, request_id: str, timeout: float) -> dict | None:
    """The process's answer to ``request_id`` once every pipeline answered (or what it has at ``timeout``); the
    answer file is removed once read whole."""
    deadline = time.monotonic() + timeout
    answer = None
    while True:
        doc = _read(process.answer_file(request_id))
        if doc is not None and doc.get("id") == request_id:
            answer = doc
            if doc.get("done"):
                process.answer_file(request_id).unlink(missing_ok=True)
                return doc
        if time.monotonic() >= deadline or not _alive(process.pid):
            return answer
        time.sleep(0.1)
