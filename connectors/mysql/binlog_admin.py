"""What binlog capture needs from a MySQL/MariaDB server: start-up checks, positions, retention, lag.

Every missing setting is reported on its own line with the statement or option that fixes it. The same
module answers ``tiersync binlog status``: the server's settings, its current position, the pipeline's
applied position, how far behind that is (bytes of binlog, transactions, seconds) and whether the
binlogs the checkpoint needs still exist.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pymysql

from engine.config import redact_url

from .binlog_position import BinlogPosition, binlog_file_number
from .connection import connect, connect_args
from .errors import translate
from .gtid import MariaGtidState, gtid_state

# the settings binlog capture needs: variable → (required value, how to set it)
REQUIRED_SETTINGS = {
    "binlog_format": ("ROW", "SET GLOBAL binlog_format = 'ROW' (and binlog_format = ROW in my.cnf)"),
    "binlog_row_image": ("FULL", "SET GLOBAL binlog_row_image = 'FULL' (and binlog_row_image = FULL in my.cnf)"),
    "binlog_row_metadata": ("FULL", "SET GLOBAL binlog_row_metadata = 'FULL' (and binlog_row_metadata = FULL "
                                    "in my.cnf); without it the binlog carries no column names"),
}
MIN_RETENTION_SECONDS = 24 * 3600  # binlogs kept for less than this are reported: a day's outage loses data

SETTINGS_SQL = ("SHOW GLOBAL VARIABLES WHERE Variable_name IN ('log_bin', 'binlog_format', 'binlog_row_image', "
                "'binlog_row_metadata', 'server_id', 'gtid_mode', 'gtid_binlog_pos', 'gtid_executed', "
                "'expire_logs_days', 'binlog_expire_logs_seconds', 'log_bin_compress', 'binlog_checksum', "
                "'version', 'version_comment')")
PURGED_GTIDS_SQL = "SELECT @@GLOBAL.gtid_purged"


@dataclass
class ServerBinlog:
    """A server's binlog settings and where its binlog ends now."""

    settings: dict[str, str]
    mariadb: bool
    file: str = ""
    pos: int = 0
    files: list[tuple[str, int]] = field(default_factory=list)  # (name, size), oldest first

    @property
    def gtid(self) -> str:
        if self.mariadb:
            return self.settings.get("gtid_binlog_pos", "")
        if self.settings.get("gtid_mode", "OFF").upper() == "ON":
            return self.settings.get("gtid_executed", "").replace("\n", "")
        return ""

    @property
    def position(self) -> BinlogPosition:
        """The current end of the binlog: a reader starting here sees only what is written after."""
        return BinlogPosition(self.gtid, self.file, self.pos, 0)

    @property
    def retention_seconds(self) -> int:
        """How long binlogs are kept; 0 means they are never purged automatically."""
        seconds = int(self.settings.get("binlog_expire_logs_seconds", "0") or 0)
        if seconds:
            return seconds
        return int(float(self.settings.get("expire_logs_days", "0") or 0) * 86400)


def server_id_for(url: str, pipeline: str) -> int:
    """The server id this pipeline's binlog reader registers with: stable per database and pipeline, and well
    away from the small ids servers are usually given."""
    args = connect_args(url)
    key = f"{args['host']}:{args['port']}/{args['database']}/{pipeline}".encode()
    return 1_000_000_000 + zlib.crc32(key) % 1_000_000_000


def read_server(conn) -> ServerBinlog:
    with conn.cursor() as cur:
        cur.execute(SETTINGS_SQL)
        settings = {name.lower(): str(value) for name, value in cur.fetchall()}
        mariadb = "mariadb" in (settings.get("version", "") + settings.get("version_comment", "")).lower()
        server = ServerBinlog(settings, mariadb)
        if settings.get("log_bin", "OFF").upper() not in ("ON", "1"):
            return server
        try:
            try:
                cur.execute("SHOW BINARY LOG STATUS")
            except pymysql.err.ProgrammingError:
                cur.execute("SHOW MASTER STATUS")
        except pymysql.err.OperationalError as exc:
            if exc.args and exc.args[0] in (1227, 1142):
                return server  # no privilege to see it: reported by the privilege check
            raise
        row = cur.fetchone()
        if row:
            server.file, server.pos = row[0], int(row[1])
            # the GTID position at exactly that file and offset (read together, so no commit falls between)
            if mariadb:
                cur.execute("SELECT BINLOG_GTID_POS(%s, %s)", (server.file, server.pos))
                settings["gtid_binlog_pos"] = str(cur.fetchone()[0] or "")
            elif len(row) > 4:
                settings["gtid_executed"] = str(row[4] or "")
        try:
            cur.execute("SHOW BINARY LOGS")
            server.files = [(r[0], int(r[1])) for r in cur.fetchall()]
        except pymysql.err.OperationalError:
            pass  # no privilege to list them: reported by the privilege check
    return server


def _grants(conn) -> str:
    with conn.cursor() as cur:
        cur.execute("SHOW GRANTS FOR CURRENT_USER()")
        return " ".join(r[0] for r in cur.fetchall()).upper()


def capture_problems(url: str, position: str | None = None) -> list[str]:
    """Everything that stops binlog capture from ``url``, one line per problem with its fix."""
    try:
        conn = connect(url, autocommit=True)
    except Exception as exc:  # noqa: BLE001 - reported as the problem it is
        return [f"cannot connect to {redact_url(url)}: {exc}"]
    try:
        server = read_server(conn)
        grants = _grants(conn)
        purged = _purged_gtids(conn, server)
    except pymysql.Error as exc:
        raise translate(exc, "reading the server's binlog settings") from None
    finally:
        conn.close()
    return setting_problems(server, grants, purged, BinlogPosition.deserialise(position) if position else None)


def _purged_gtids(conn, server: ServerBinlog) -> str:
    if server.mariadb or not server.gtid:
        return ""
    with conn.cursor() as cur:
        cur.execute(PURGED_GTIDS_SQL)
        return str(cur.fetchone()[0] or "").replace("\n", "")


def setting_problems(server: ServerBinlog, grants: str, purged: str = "",
                     position: BinlogPosition | None = None) -> list[str]:
    settings = server.settings
    problems = []
    if settings.get("log_bin", "OFF").upper() not in ("ON", "1"):
        problems.append("binary logging is off (log_bin = OFF): start the server with log_bin (e.g. "
                        "log_bin = binlog and server_id = 1 in my.cnf) and restart it")
    for name, (required, fix) in REQUIRED_SETTINGS.items():
        value = settings.get(name)
        if value is None:
            problems.append(f"the server has no {name} setting (MariaDB 10.5+ or MySQL 8.0.14+ needed for binlog "
                            f"capture)")
        elif value.upper() != required:
            problems.append(f"{name} is {value}, binlog capture needs {required}: {fix}")
    if settings.get("log_bin_compress", "OFF").upper() in ("ON", "1"):
        problems.append("log_bin_compress is ON: compressed binlog events cannot be decoded; "
                        "SET GLOBAL log_bin_compress = OFF")
    if not _has_privilege(grants, ("REPLICATION SLAVE", "REPLICATION REPLICA")):
        problems.append("the user in the URL lacks REPLICATION SLAVE: GRANT REPLICATION SLAVE ON *.* TO <user>")
    if not _has_privilege(grants, ("REPLICATION CLIENT", "BINLOG MONITOR", "SUPER")):
        problems.append("the user in the URL lacks REPLICATION CLIENT (BINLOG MONITOR on MariaDB): "
                        "GRANT REPLICATION CLIENT ON *.* TO <user>")
    retention = server.retention_seconds
    if retention and retention < MIN_RETENTION_SECONDS:
        problems.append(f"binlogs are kept only {retention / 3600:.1f} h (binlog_expire_logs_seconds / "
                        f"expire_logs_days): an outage longer than that loses changes; keep them at least "
                        f"{MIN_RETENTION_SECONDS // 3600} h")
    if position is not None:
        gone = purged_problem(server, position, purged)
        if gone:
            problems.append(gone)
    return problems


def _has_privilege(grants: str, names: tuple[str, ...]) -> bool:
    if "ALL PRIVILEGES ON *.*" in grants:
        return True
    return any(name in grants for name in names)


def purged_problem(server: ServerBinlog, position: BinlogPosition, purged: str = "") -> str:
    """Why the binlog no longer holds what comes after ``position`` ('' when it does)."""
    fix = ("changes after the checkpoint are lost from the source's binlog: re-load the tables with "
           "`tiersync snapshot`, then `tiersync binlog mark` to continue from now")
    if position.gtid and not server.mariadb and purged:
        applied = gtid_state(position.gtid)
        if not applied.covers(gtid_state(purged)):
            return f"GTIDs {purged} were purged from the binlog but checkpoint {position.gtid} has not applied " \
                   f"them all: {fix}"
        return ""
    if position.file and server.files:
        oldest = server.files[0][0]
        if binlog_file_number(position.file) < binlog_file_number(oldest):
            return f"binlog {position.file} of checkpoint {position.serialise()} was purged (oldest is {oldest}): " \
                   f"{fix}"
    return ""


@dataclass
class BinlogLag:
    bytes_behind: int | None
    transactions_behind: int | None
    seconds_behind: float | None


def lag(server: ServerBinlog, position: BinlogPosition, oldest_pending: datetime | None) -> BinlogLag:
    """How far ``position`` is behind the server's current end."""
    behind_bytes = None
    if position.file and server.files:
        sizes = dict(server.files)
        start = binlog_file_number(position.file)
        behind_bytes = 0
        for name, size in server.files:
            number = binlog_file_number(name)
            if number == start:
                behind_bytes += max(size - position.pos, 0)
            elif number > start:
                behind_bytes += size
        if position.file not in sizes:
            behind_bytes = None
    behind_txns = None
    if server.mariadb and position.gtid is not None:
        now, then = MariaGtidState(server.gtid), MariaGtidState(position.gtid)
        behind_txns = sum(max(g.sequence - (then.domains[d].sequence if d in then.domains else 0), 0)
                          for d, g in now.domains.items())
    seconds = None if oldest_pending is None else max(0.0, (datetime.now(timezone.utc) - oldest_pending)
                                                      .total_seconds())
    if oldest_pending is None and behind_bytes is not None:
        seconds = 0.0
    return BinlogLag(behind_bytes, behind_txns, seconds)
