"""Every SQL string and value rule of SQLite that tiersync uses."""

from __future__ import annotations

import json
import re
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any, Callable
from uuid import UUID

from engine.event import TableId
from engine.schema import TableInfo


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def trigger_name(table: TableId, op: str) -> str:
    return f"tiersync_{table.name}_{op}"


CHANGE_LOG_DDL = [
    """CREATE TABLE IF NOT EXISTS tiersync_change_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tbl TEXT NOT NULL,
    op TEXT NOT NULL,
    pk TEXT,
    before TEXT,
    after TEXT,
    origin TEXT,
    captured_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
)""",
    """CREATE TABLE IF NOT EXISTS tiersync_consumer (
    name TEXT PRIMARY KEY,
    last_id INTEGER NOT NULL,
    tables TEXT,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
)""",
    # written by tiersync's own apply transactions so the triggers can record the change's origin
    "CREATE TABLE IF NOT EXISTS tiersync_apply_origin (origin TEXT)",
]

SNAPSHOT_STATE_DDL = """CREATE TABLE IF NOT EXISTS tiersync_snapshot (
    pipeline TEXT NOT NULL,
    source_table TEXT NOT NULL,
    last_key TEXT,
    rows INTEGER NOT NULL DEFAULT 0,
    done INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (pipeline, source_table)
)"""

STATE_DDL = [
    """CREATE TABLE IF NOT EXISTS tiersync_checkpoint (
    pipeline TEXT PRIMARY KEY,
    position TEXT NOT NULL,
    batches INTEGER NOT NULL DEFAULT 0,
    changes INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
)""",
    """CREATE TABLE IF NOT EXISTS tiersync_dead_letter (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline TEXT NOT NULL,
    source_table TEXT NOT NULL,
    target_table TEXT NOT NULL,
    op TEXT NOT NULL,
    key TEXT,
    error TEXT NOT NULL,
    event TEXT NOT NULL,
    position TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
)""",
    "CREATE TABLE IF NOT EXISTS tiersync_apply_origin (origin TEXT)",
    SNAPSHOT_STATE_DDL,
]

SAVE_SNAPSHOT_SQL = (
    "INSERT INTO tiersync_snapshot (pipeline, source_table, last_key, rows, done) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (pipeline, source_table) DO UPDATE SET last_key = excluded.last_key, rows = excluded.rows, "
    "done = excluded.done, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')")

LOAD_SNAPSHOT_SQL = "SELECT last_key, rows, done FROM tiersync_snapshot WHERE pipeline = ? AND source_table = ?"


def _row_values(key: tuple[str, ...]) -> str:
    return "(" + ", ".join(quote(c) for c in key) + ")"


def chunk_sql(table: TableInfo, key: tuple[str, ...], after: bool, where: str | None) -> str:
    """Rows above a key, in key order, as the same JSON images the capture triggers write."""
    conditions = []
    if after:
        conditions.append(f"{_row_values(key)} > ({', '.join('?' for _ in key)})")
    if where:
        conditions.append(f"({where})")
    clause = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    order = ", ".join(quote(c) for c in key)
    return f"SELECT {_image(table, 't')} FROM {quote(table.id.name)} t{clause} ORDER BY {order} LIMIT ?"


def keys_sql(table: TableId, key: tuple[str, ...], after: bool) -> str:
    clause = f" WHERE {_row_values(key)} > ({', '.join('?' for _ in key)})" if after else ""
    cols = ", ".join(quote(c) for c in key)
    return f"SELECT {cols} FROM {quote(table.name)}{clause} ORDER BY {cols} LIMIT ?"


def existing_keys_sql(table: TableId, key: tuple[str, ...], count: int) -> str:
    rows = ", ".join("(" + ", ".join("?" for _ in key) + ")" for _ in range(count))
    cols = ", ".join(quote(c) for c in key)
    return f"SELECT {cols} FROM {quote(table.name)} WHERE {_row_values(key)} IN (VALUES {rows})"


def count_sql(table: TableId, where: str | None) -> str:
    return f"SELECT count(*) FROM {quote(table.name)}" + (f" WHERE ({where})" if where else "")


# catalog
TABLE_EXISTS_SQL = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
COLUMNS_SQL = 'SELECT name, type, "notnull", pk, hidden FROM pragma_table_xinfo(?)'
PARENTS_SQL = 'SELECT "table" FROM pragma_foreign_key_list(?)'
UNIQUE_INDEXES_SQL = 'SELECT name, "unique" FROM pragma_index_list(?) WHERE partial = 0'
INDEX_COLUMNS_SQL = "SELECT name FROM pragma_index_info(?) ORDER BY seqno"

# tiersync's own tables
LOG_HEAD_SQL = "SELECT coalesce(max(id), 0) FROM tiersync_change_log"
LOAD_CHECKPOINT_SQL = "SELECT position FROM tiersync_checkpoint WHERE pipeline = ?"
DEAD_LETTER_COLUMNS = ("id", "source_table", "target_table", "op", "key", "error", "created_at")
DEAD_LETTER_COUNT_SQL = "SELECT count(*) FROM tiersync_dead_letter WHERE pipeline = ?"
DEAD_LETTERS_SQL = (f"SELECT {', '.join(DEAD_LETTER_COLUMNS)} FROM tiersync_dead_letter WHERE pipeline = ? "
                    f"ORDER BY id LIMIT ?")

SAVE_CHECKPOINT_SQL = (
    "INSERT INTO tiersync_checkpoint (pipeline, position, batches, changes) VALUES (?, ?, 1, ?) "
    "ON CONFLICT (pipeline) DO UPDATE SET position = excluded.position, batches = batches + 1, "
    "changes = changes + excluded.changes, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')")

DEAD_LETTER_SQL = ("INSERT INTO tiersync_dead_letter (pipeline, source_table, target_table, op, key, error, event, "
                   "position) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")


def affinity(declared: str) -> str:
    """SQLite's column affinity rules (section 3.1 of its datatype documentation)."""
    upper = declared.upper()
    if "INT" in upper:
        return "INTEGER"
    if any(word in upper for word in ("CHAR", "CLOB", "TEXT")):
        return "TEXT"
    if upper == "" or "BLOB" in upper:
        return "BLOB"
    if any(word in upper for word in ("REAL", "FLOA", "DOUB")):
        return "REAL"
    return "NUMERIC"


def _image_value(column: str, declared: str, image: str) -> str:
    ref = f"{image}.{quote(column)}"
    # JSON cannot hold a BLOB: blobs travel as hex. Reals travel as JSON numbers with 18 significant digits:
    # SQLite's JSON writer keeps only 15, its printf is not correctly rounded at 17 (1.7976931348623157e308
    # prints as …56e+308), and its own text-to-real CAST is not correctly rounded either, so a shorter text
    # "verified" by CAST can still be a different double. 18 digits read back exactly (checked on millions of
    # doubles); the reader turns them into the float, or for decimal columns into its shortest decimal text.
    # Any column can hold a real (SQLite types values, not columns); infinities travel as strings.
    real_json = (f"CASE WHEN {ref} = 9e999 THEN 'Infinity' WHEN {ref} = -9e999 THEN '-Infinity' "
                 f"ELSE json(printf('%!.18g', {ref})) END")
    return f"CASE typeof({ref}) WHEN 'blob' THEN hex({ref}) WHEN 'real' THEN {real_json} ELSE {ref} END"


def _image(table: TableInfo, image: str) -> str:
    parts = []
    for column in table.columns:
        parts.append(literal(column.name))
        parts.append(_image_value(column.name, column.type, image))
    return "json_object(" + ", ".join(parts) + ")"


def trigger_ddl(table: TableInfo, key: tuple[str, ...]) -> list[str]:
    name = literal(str(table.id))
    target = quote(table.id.name)
    origin = "(SELECT origin FROM tiersync_apply_origin LIMIT 1)"

    def key_of(image: str) -> str:
        return "json_array(" + ", ".join(_image_value(c, table.column(c).type, image) for c in key) + ")" \
            if key else "NULL"

    new_image, old_image = _image(table, "NEW"), _image(table, "OLD")
    return [
        f"""CREATE TRIGGER IF NOT EXISTS {quote(trigger_name(table.id, 'ins'))} AFTER INSERT ON {target}
BEGIN
    INSERT INTO tiersync_change_log (tbl, op, pk, after, origin)
    VALUES ({name}, 'c', {key_of('NEW')}, {new_image}, {origin});
END""",
        f"""CREATE TRIGGER IF NOT EXISTS {quote(trigger_name(table.id, 'upd'))} AFTER UPDATE ON {target}
WHEN {old_image} IS NOT {new_image}
BEGIN
    INSERT INTO tiersync_change_log (tbl, op, pk, before, after, origin)
    VALUES ({name}, 'u', {key_of('NEW')}, {old_image}, {new_image}, {origin});
END""",
        f"""CREATE TRIGGER IF NOT EXISTS {quote(trigger_name(table.id, 'del'))} AFTER DELETE ON {target}
BEGIN
    INSERT INTO tiersync_change_log (tbl, op, pk, before, origin)
    VALUES ({name}, 'd', {key_of('OLD')}, {old_image}, {origin});
END""",
    ]


def drop_trigger_ddl(table: TableId) -> list[str]:
    return [f"DROP TRIGGER IF EXISTS {quote(trigger_name(table, op))}" for op in ("ins", "upd", "del")]


DROP_CHANGE_LOG_DDL = ["DROP TABLE IF EXISTS tiersync_change_log", "DROP TABLE IF EXISTS tiersync_consumer"]

INSTALLED_TRIGGERS_SQL = ("SELECT tbl_name, name FROM sqlite_master "
                          "WHERE type = 'trigger' AND name LIKE 'tiersync\\_%' ESCAPE '\\'")

READ_SQL = ("SELECT id, tbl, op, pk, before, after, origin, captured_at FROM tiersync_change_log "
            "WHERE id > ? AND tbl IN (SELECT value FROM json_each(?)) ORDER BY id LIMIT ?")

PURGE_SQL = ("DELETE FROM tiersync_change_log WHERE id <= ? AND NOT EXISTS (SELECT 1 FROM tiersync_consumer c "
             "WHERE (c.tables IS NULL OR tiersync_change_log.tbl IN (SELECT value FROM json_each(c.tables))) "
             "AND tiersync_change_log.id > c.last_id)")

PENDING_SQL = ("SELECT count(*), min(captured_at) FROM tiersync_change_log "
               "WHERE id > ? AND tbl IN (SELECT value FROM json_each(?))")

TABLE_PENDING_SQL = "SELECT tbl, count(*), min(captured_at) FROM tiersync_change_log GROUP BY tbl"

REGISTER_CONSUMER_SQL = ("INSERT INTO tiersync_consumer (name, last_id, tables) VALUES (?, ?, ?) "
                         "ON CONFLICT (name) DO UPDATE SET tables = excluded.tables")

UPDATE_CONSUMER_SQL = ("UPDATE tiersync_consumer SET last_id = ?, "
                       "updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE name = ?")


def truncate_sql(table: TableId) -> str:
    return f"DELETE FROM {quote(table.name)}"  # SQLite has no TRUNCATE


def upsert_sql(table: TableId, columns: list[str], key: list[str]) -> str:
    cols = ", ".join(quote(c) for c in columns)
    marks = ", ".join("?" for _ in columns)
    updates = [c for c in columns if c not in key]
    action = ("DO UPDATE SET " + ", ".join(f"{quote(c)} = excluded.{quote(c)}" for c in updates)
              if updates else "DO NOTHING")
    return (f"INSERT INTO {quote(table.name)} ({cols}) VALUES ({marks}) "
            f"ON CONFLICT ({', '.join(quote(c) for c in key)}) {action}")


def insert_sql(table: TableId, columns: list[str]) -> str:
    return (f"INSERT INTO {quote(table.name)} ({', '.join(quote(c) for c in columns)}) "
            f"VALUES ({', '.join('?' for _ in columns)})")


def delete_sql(table: TableId, key: list[str]) -> str:
    return f"DELETE FROM {quote(table.name)} WHERE " + " AND ".join(f"{quote(c)} = ?" for c in key)


KEY_VALUES_PER_READ = 900  # bound parameters per conflict-policy read (older SQLite allows 999)


def current_rows_sql(table: TableId, key: list[str], columns: list[str], count: int) -> str:
    """``count`` rows of ``table`` by key (the transaction's BEGIN IMMEDIATE already holds the write lock)."""
    row = "(" + ", ".join("?" for _ in key) + ")"
    return (f"SELECT {', '.join(quote(c) for c in columns)} FROM {quote(table.name)} "
            f"WHERE ({', '.join(quote(c) for c in key)}) IN (VALUES {', '.join(row for _ in range(count))})")


# ---------------------------------------------------------------- values

def _lenient(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """SQLite stores whatever it is given: a value that does not parse travels as it is."""
    def convert(value: Any) -> Any:
        try:
            return parse(value)
        except (ValueError, TypeError, InvalidOperation):
            return value
    return convert


def _decimal(value: Any) -> Any:
    if isinstance(value, Decimal):  # a REAL (see _image_value): the shortest decimal that is that double
        return Decimal(repr(float(value))) if value.is_finite() else value
    if isinstance(value, float):
        return Decimal(repr(value))
    return Decimal(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else value


def _real(value: Any) -> Any:
    return float(value) if isinstance(value, (int, str, Decimal)) and not isinstance(value, bool) else value


def _bool(value: Any) -> Any:
    return bool(value) if isinstance(value, int) else value


def _text_only(parse: Callable[[str], Any]) -> Callable[[Any], Any]:
    return lambda value: parse(value) if isinstance(value, str) else value


def _blob(value: Any) -> Any:
    return bytes.fromhex(value) if isinstance(value, str) else value


def _json_number(value: Decimal) -> Any:
    """A number of a JSON document: a plain float where that writes back as the same text, else exact."""
    as_float = float(value)
    return as_float if repr(as_float) == str(value) else value  # 1.10, 1E+20, 0.1234567890123456789 stay Decimal


def _json_int(text: str) -> Any:
    return Decimal(text) if text == "-0" or len(text) > 4000 else int(text)


def _json_walk(value: Any) -> Any:
    if isinstance(value, Decimal):
        return _json_number(value)
    if isinstance(value, list):
        return [_json_walk(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_walk(v) for k, v in value.items()}
    return value


def _json(value: Any) -> Any:
    if isinstance(value, str):  # numbers are kept exact: 1.10 stays 1.10, 12345678901234567890.5 all its digits
        return _json_walk(json.loads(value, parse_float=Decimal, parse_int=_json_int))
    if isinstance(value, Decimal):  # a JSON column holding a REAL
        return float(value)
    return value


def _array(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) and value.startswith("[") else value


_DECODERS: list[tuple[re.Pattern, Callable[[Any], Any]]] = [
    (re.compile(r"\[\]$"), _array),
    (re.compile(r"^BOOL"), _bool),
    (re.compile(r"^(DATETIME|TIMESTAMP)"), _text_only(lambda v: datetime.fromisoformat(v.replace(" ", "T", 1)))),
    (re.compile(r"^DATE"), _text_only(date.fromisoformat)),
    (re.compile(r"^TIME"), _text_only(time.fromisoformat)),
    (re.compile(r"^(DECIMAL|NUMERIC|MONEY)"), _decimal),
    (re.compile(r"^(REAL|FLOAT|DOUBLE)"), _real),
    (re.compile(r"^(JSON|JSONB)$"), _json),
    (re.compile(r"^UUID$"), _text_only(UUID)),
    (re.compile(r"^(BLOB|BYTEA|BINARY|VARBINARY)"), _blob),
]


def value_decoder(declared: str) -> Callable[[Any], Any] | None:
    """How a value of a column declared ``declared`` in a JSON row image becomes its Python value."""
    upper = declared.strip().upper()
    for pattern, decoder in _DECODERS:
        if pattern.search(upper):
            return _lenient(decoder)
    return None


# ---------------------------------------------------------------- reconciliation (see engine.reconcile)
# SQLite has no hash function and stores values of any type in any column: the checksum connection registers
# tiersync_norm(kind, value) (engine.reconcile.normalise itself), tiersync_h60(text) and the exact aggregate
# tiersync_sum(integer) as SQL functions.

_KINDS: list[tuple[re.Pattern, str]] = [
    (re.compile(r"^BOOL"), "bool"),
    (re.compile(r"^(DATETIME|TIMESTAMP)"), "timestamp"),
    (re.compile(r"^DATE"), "date"),
    (re.compile(r"^TIME"), "time"),
    (re.compile(r"^(DECIMAL|NUMERIC|MONEY)"), "decimal"),
    (re.compile(r"^(REAL|FLOAT|DOUBLE)"), "float"),
    (re.compile(r"^(JSON|JSONB)$"), "json"),
    (re.compile(r"^(BLOB|BYTEA|BINARY|VARBINARY)"), "bytes"),
    (re.compile(r"INT"), "int"),
]


def column_kind(declared: str) -> str:
    upper = declared.strip().upper()
    for pattern, kind in _KINDS:
        if pattern.search(upper):
            return kind
    return "text"


def _encoded(columns, image: str) -> str:
    """The columns' canonical texts joined as engine.reconcile.encode_values does."""
    if not columns:
        return "''"
    parts = []
    for c in columns:
        value = f"tiersync_norm({literal(c.kind)}, {image}.{quote(c.name)})"
        parts.append(f"coalesce(replace(replace({value}, '\\', '\\\\'), ',', '\\,'), '\\N')")
    return " || ',' || ".join(parts)


def _key_hash(spec) -> str:
    if len(spec.key) == 1 and spec.key[0].kind == "int":  # engine.reconcile.key_hash: the key itself
        return f"(t.{quote(spec.key[0].name)} & 1152921504606846975)"
    return f"tiersync_h60({_encoded(spec.key, 't')})"


def _hashed_rows(spec, with_keys: bool) -> str:
    keys = "".join(f", t.{quote(c.name)} AS _k{i}" for i, c in enumerate(spec.key)) if with_keys else ""
    where = f" WHERE ({spec.where})" if spec.where else ""
    inner = (f"SELECT {_encoded(spec.key, 't')} AS k, {_key_hash(spec)} AS kh, {_encoded(spec.columns, 't')} AS r"
             f"{keys} FROM {quote(spec.table.id.name)} t{where}")
    key_out = "".join(f", s._k{i}" for i in range(len(spec.key))) if with_keys else ""
    return f"SELECT s.k, s.kh, tiersync_h60(s.k || '|' || s.r) AS rh{key_out} FROM ({inner}) s"


_WITHIN = " WHERE h.kh & {mask} IN (SELECT value FROM json_each(?))"


def bucket_sums_sql(spec, bits: int, within_bits: int | None) -> str:
    within = _WITHIN.format(mask=(1 << within_bits) - 1) if within_bits is not None else ""
    # SQLite's sum() fails on integer overflow: tiersync_sum adds exactly and returns the total as text
    return (f"SELECT h.kh & {(1 << bits) - 1}, count(*), tiersync_sum(h.rh) "
            f"FROM ({_hashed_rows(spec, False)}) h{within} GROUP BY 1")


def row_hashes_sql(spec, within_bits: int) -> str:
    keys = "".join(f", h._k{i}" for i in range(len(spec.key)))
    return f"SELECT h.k, h.rh{keys} FROM ({_hashed_rows(spec, True)}) h" + _WITHIN.format(mask=(1 << within_bits) - 1)


def rows_by_key_sql(table: TableInfo, key: tuple[str, ...], count: int) -> str:
    rows = ", ".join("(" + ", ".join("?" for _ in key) + ")" for _ in range(count))
    return f"SELECT {_image(table, 't')} FROM {quote(table.id.name)} t WHERE {_row_values(key)} IN (VALUES {rows})"


UNAPPLIED_SQL = ("SELECT tbl, pk FROM tiersync_change_log WHERE id > ? AND id <= ? "
                 "AND tbl IN (SELECT value FROM json_each(?)) LIMIT 1000000")


RECONCILE_RUN_DDL = """CREATE TABLE IF NOT EXISTS tiersync_reconcile_run (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline TEXT NOT NULL,
    source_table TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    run_by TEXT NOT NULL,
    mode TEXT NOT NULL,
    result TEXT NOT NULL,
    missing INTEGER NOT NULL,
    extra INTEGER NOT NULL,
    different INTEGER NOT NULL,
    in_flight INTEGER NOT NULL,
    repaired TEXT,
    report TEXT
)"""
RECONCILE_RUN_COLUMNS = ("pipeline", "source_table", "started_at", "run_by", "mode", "result", "missing", "extra",
                         "different", "in_flight", "repaired", "report")
SAVE_RECONCILE_RUN_SQL = (f"INSERT INTO tiersync_reconcile_run ({', '.join(RECONCILE_RUN_COLUMNS)}) "
                          f"VALUES ({', '.join('?' for _ in RECONCILE_RUN_COLUMNS)})")
RECONCILE_RUNS_SQL = (f"SELECT id, finished_at, {', '.join(c for c in RECONCILE_RUN_COLUMNS if c != 'report')} "
                      f"FROM tiersync_reconcile_run WHERE pipeline = ? ORDER BY id DESC LIMIT ?")

# change-log compaction (see engine.compaction); sizes are the images' lengths (approximate bytes)
LOG_SIZE_SQL = ("SELECT count(*), coalesce(sum(length(coalesce(before, '')) + length(coalesce(after, '')) "
                "+ length(coalesce(pk, '')) + length(tbl) + 40), 0) FROM tiersync_change_log")
_OLDER = "captured_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?)"
REPEATED_KEYS_SQL = (f"SELECT tbl || ' ' || pk FROM tiersync_change_log WHERE tbl IN (SELECT value FROM json_each(?)) "
                     f"AND {_OLDER} GROUP BY tbl, pk HAVING count(*) > 1")
LOG_ROWS_OF_KEYS_SQL = (f"SELECT id, tbl, pk, op, before, origin FROM tiersync_change_log "
                        f"WHERE tbl || ' ' || pk IN (SELECT value FROM json_each(?)) AND {_OLDER} ORDER BY id")
LOG_REMOVE_SQL = "DELETE FROM tiersync_change_log WHERE id IN (SELECT value FROM json_each(?))"
LOG_REWRITE_SQL = "UPDATE tiersync_change_log SET op = ?, before = ? WHERE id = ?"

def exchange_sql():
    """The exchange database's tables and statements (see engine.exchange.ExchangeSql)."""
    from engine.exchange import ExchangeSql

    return ExchangeSql(
        ddl=tuple(STATE_DDL) + (
            """CREATE TABLE IF NOT EXISTS tiersync_outbox (
    link TEXT NOT NULL, seq INTEGER NOT NULL, batch_id TEXT NOT NULL, payload BLOB NOT NULL,
    events INTEGER NOT NULL, created_at TEXT NOT NULL, acked_at TEXT, PRIMARY KEY (link, seq))""",
            "CREATE TABLE IF NOT EXISTS tiersync_link_seq (link TEXT PRIMARY KEY, last_seq INTEGER NOT NULL)",
            """CREATE TABLE IF NOT EXISTS tiersync_inbox (
    sender TEXT NOT NULL, seq INTEGER NOT NULL, batch_id TEXT NOT NULL, payload BLOB NOT NULL,
    events INTEGER NOT NULL, received_at TEXT NOT NULL, PRIMARY KEY (sender, seq))""",
            """CREATE TABLE IF NOT EXISTS tiersync_inbox_consumer (
    consumer TEXT NOT NULL, sender TEXT NOT NULL, last_seq INTEGER NOT NULL, PRIMARY KEY (consumer, sender))""",
            """CREATE TABLE IF NOT EXISTS tiersync_trace (
    batch_id TEXT NOT NULL, node TEXT NOT NULL, status TEXT NOT NULL, at TEXT NOT NULL, detail TEXT NOT NULL,
    PRIMARY KEY (batch_id, node, status, detail))""",
            """CREATE TABLE IF NOT EXISTS tiersync_trace_key (
    batch_id TEXT NOT NULL, tbl TEXT NOT NULL, key_text TEXT NOT NULL, PRIMARY KEY (tbl, key_text, batch_id))""",
            "CREATE INDEX IF NOT EXISTS tiersync_trace_at ON tiersync_trace (at)",
            "CREATE INDEX IF NOT EXISTS tiersync_trace_key_batch ON tiersync_trace_key (batch_id)",
        ),
        begin="BEGIN IMMEDIATE", commit="COMMIT", rollback="ROLLBACK",
        seq_init="INSERT INTO tiersync_link_seq (link, last_seq) VALUES (?, 0) ON CONFLICT (link) DO NOTHING",
        seq_next="UPDATE tiersync_link_seq SET last_seq = last_seq + 1 WHERE link = ? RETURNING last_seq",
        outbox_insert=("INSERT INTO tiersync_outbox (link, seq, batch_id, payload, events, created_at) "
                       "VALUES (?, ?, ?, ?, ?, ?)"),
        outbox_pending=("SELECT seq, batch_id, payload, events FROM tiersync_outbox "
                        "WHERE link = ? AND acked_at IS NULL ORDER BY seq LIMIT ?"),
        outbox_after=("SELECT seq, batch_id, payload, events FROM tiersync_outbox "
                      "WHERE link = ? AND seq > ? ORDER BY seq LIMIT ?"),
        outbox_ack="UPDATE tiersync_outbox SET acked_at = ? WHERE link = ? AND seq = ?",
        outbox_recent=("SELECT batch_id FROM tiersync_outbox WHERE link = ? AND acked_at IS NOT NULL "
                       "ORDER BY seq DESC LIMIT ?"),
        outbox_purge="DELETE FROM tiersync_outbox WHERE link = ? AND seq <= ? AND acked_at IS NOT NULL",
        inbox_insert=("INSERT INTO tiersync_inbox (sender, seq, batch_id, payload, events, received_at) "
                      "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (sender, seq) DO NOTHING"),
        inbox_senders="SELECT DISTINCT sender FROM tiersync_inbox",
        inbox_last="SELECT max(seq) FROM tiersync_inbox WHERE sender = ?",
        inbox_read=("SELECT seq, batch_id, payload FROM tiersync_inbox WHERE sender = ? AND seq > ? "
                    "ORDER BY seq LIMIT ?"),
        consumer_save=("INSERT INTO tiersync_inbox_consumer (consumer, sender, last_seq) VALUES (?, ?, ?) "
                       "ON CONFLICT (consumer, sender) DO UPDATE SET last_seq = excluded.last_seq"),
        consumer_positions="SELECT consumer, last_seq FROM tiersync_inbox_consumer WHERE sender = ?",
        inbox_purge="DELETE FROM tiersync_inbox WHERE sender = ? AND seq <= ?",
        trace_insert=("INSERT INTO tiersync_trace (batch_id, node, status, at, detail) VALUES (?, ?, ?, ?, ?) "
                      "ON CONFLICT DO NOTHING"),
        trace_for=("SELECT batch_id, node, status, at, detail FROM tiersync_trace "
                   "WHERE batch_id IN (SELECT value FROM json_each(?))"),
        key_insert="INSERT INTO tiersync_trace_key (batch_id, tbl, key_text) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        key_batches="SELECT batch_id FROM tiersync_trace_key WHERE tbl = ? AND key_text = ?",
        checkpoint_save=SAVE_CHECKPOINT_SQL,
        checkpoint_load=LOAD_CHECKPOINT_SQL,
        outbox_backlog=("SELECT link, count(*), coalesce(sum(events), 0), min(created_at) FROM tiersync_outbox "
                        "WHERE acked_at IS NULL GROUP BY link ORDER BY link"),
        inbox_backlog=("SELECT count(*), coalesce(sum(events), 0), min(received_at) FROM tiersync_inbox "
                       "WHERE sender = ? AND seq > ?"),
        outbox_prune="DELETE FROM tiersync_outbox WHERE acked_at IS NOT NULL AND acked_at < ?",
        trace_prune=("DELETE FROM tiersync_trace WHERE at < ? "
                     "AND batch_id NOT IN (SELECT batch_id FROM tiersync_outbox WHERE acked_at IS NULL) "
                     "AND batch_id NOT IN (SELECT batch_id FROM tiersync_inbox)"),
        link_sequences="SELECT link, last_seq FROM tiersync_link_seq",
        inbox_drop_from="DELETE FROM tiersync_inbox WHERE sender = ? AND seq >= ?",
        outbox_unack_from="UPDATE tiersync_outbox SET acked_at = NULL WHERE link = ? AND seq >= ?",
        trace_key_prune=("DELETE FROM tiersync_trace_key WHERE NOT EXISTS "
                         "(SELECT 1 FROM tiersync_trace t WHERE t.batch_id = tiersync_trace_key.batch_id)"),
    )
