"""Low-level PostgreSQL logical replication: LSNs, the pgoutput decoder, the replication stream.

Self-contained (psycopg 3 only); the capture engine builds on it.
"""

from .lsn import Lsn
from .messages import (
    UNCHANGED,
    Begin,
    Column,
    Commit,
    Delete,
    Insert,
    Message,
    Origin,
    PgOutputMessage,
    Relation,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    Type,
    Unchanged,
    Update,
    Value,
)
from .pgoutput import PgOutputDecoder, PgOutputError, decode_tuple
from .slots import (
    SlotStatus,
    check_wal_level,
    create_publication,
    create_slot,
    drop_publication,
    drop_slot,
    slot_status,
)
from .stream import ReplicationStream, ReplicationStreamError, XLogData

__all__ = [
    "UNCHANGED", "Begin", "Column", "Commit", "Delete", "Insert", "Lsn", "Message", "Origin", "PgOutputDecoder",
    "PgOutputError", "PgOutputMessage", "Relation", "ReplicationStream", "ReplicationStreamError", "SlotStatus",
    "StreamAbort", "StreamCommit", "StreamStart", "StreamStop", "Truncate", "Type", "Unchanged", "Update",
    "Value", "XLogData", "check_wal_level", "create_publication", "create_slot", "decode_tuple",
    "drop_publication", "drop_slot", "slot_status",
]
