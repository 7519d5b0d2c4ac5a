"""A throwaway MariaDB server: mariadb-install-db into a temporary directory, started on a free port.

Binlog is on with the settings log-based capture needs (ROW format, full row
image, full row metadata, GTIDs), so one server serves trigger and binlog
tests. When the tests run as root (CI does), the server runs as the ``mysql``
system user. ``root`` connects over TCP without a password.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.harness.postgres import free_port


def _mariadb_bin(name: str) -> str:
    for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if candidate and os.path.exists(candidate):
            return candidate
    raise RuntimeError(f"MariaDB's {name} is not installed; run ./ops/test.sh, which installs it")


class MariaDBServer:
    """One MariaDB instance; ``url(db)`` names a database on it."""

    def __init__(self, settings: dict[str, str] | None = None, server_id: int = 1):
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="tiersync-maria-"))
        self.data = self.dir / "data"
        self.socket = self.dir / "mysqld.sock"
        self.settings = {
            "port": str(self.port),
            "bind-address": "127.0.0.1",
            "socket": str(self.socket),
            "pid-file": str(self.dir / "mysqld.pid"),
            "log-error": str(self.dir / "error.log"),
            "server-id": str(server_id),
            "log-bin": "binlog",
            "binlog-format": "ROW",
            "binlog-row-image": "FULL",
            "binlog-row-metadata": "FULL",
            "character-set-server": "utf8mb4",
            "collation-server": "utf8mb4_general_ci",
            "default-time-zone": "+08:00",
            "innodb-buffer-pool-size": "128M",
            "innodb-flush-log-at-trx-commit": "2",
            "sync-binlog": "0",
            "skip-name-resolve": "ON",
            "max-connections": "200",
            "innodb-lock-wait-timeout": "20",
        } | (settings or {})
        self._user = "mysql" if os.geteuid() == 0 else None
        self._process: subprocess.Popen | None = None
        if self._user:
            entry = pwd.getpwnam(self._user)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)

    def init(self) -> MariaDBServer:
        command = [_mariadb_bin("mariadb-install-db"), f"--datadir={self.data}", "--skip-test-db",
                   "--auth-root-authentication-method=normal"]
        if self._user:
            command.append(f"--user={self._user}")
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed: {result.stderr[-2000:]}")
        return self

    def start(self) -> MariaDBServer:
        command = [_mariadb_bin("mariadbd"), "--no-defaults", f"--datadir={self.data}"]
        command += [f"--{key}={value}" for key, value in self.settings.items()]
        if self._user:
            command.append(f"--user={self._user}")
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"MariaDB did not start:\n{self._log_tail()}")
            try:
                self._grant_tcp_root()
                return self
            except Exception:
                time.sleep(0.2)
        raise RuntimeError(f"MariaDB did not start within 60 s:\n{self._log_tail()}")

    def _log_tail(self) -> str:
        log = self.dir / "error.log"
        return log.read_text(errors="replace")[-2000:] if log.exists() else ""

    def _grant_tcp_root(self) -> None:
        import pymysql

        conn = pymysql.connect(unix_socket=str(self.socket), user="root", password="", autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute("CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY ''")
                cur.execute("GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION")
        finally:
            conn.close()

    def stop(self) -> None:
        if self._process and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """kill -9 the server, as a crash would."""
        if self._process and self._process.poll() is None:
            os.kill(self._process.pid, signal.SIGKILL)
            self._process.wait(30)

    def restart(self) -> None:
        self.stop()
        self.start()

    def url(self, database: str = "mysql", scheme: str = "mariadb") -> str:
        return f"{scheme}://root@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str | None = None, **kwargs):
        import pymysql

        return pymysql.connect(host="127.0.0.1", port=self.port, user="root", password="", database=database,
                               charset="utf8mb4", autocommit=True, **kwargs)

    def create_database(self, name: str) -> str:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
                cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci")
        finally:
            conn.close()
        return self.url(name)

    def destroy(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
