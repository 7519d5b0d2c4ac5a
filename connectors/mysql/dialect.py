"""Every SQL string of MySQL/MariaDB that tiersync uses.

tiersync's own tables (change log, consumers, checkpoints, dead letters, snapshot progress, the pipeline
lock) live in the database the URL names, prefixed ``tiersync_``: a MySQL schema *is* a database, and a
separate one would be shared by every database on the server (and need CREATE DATABASE rights).
"""

from __future__ import annotations

from engine.event import TableId
from engine.schema import ColumnInfo, TableInfo


def quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def qualified(table: TableId) -> str:
    return f"{quote(table.schema)}.{quote(table.name)}" if table.schema else quote(table.name)


def literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


# ---------------------------------------------------------------- catalog

COLUMNS_SQL = """
SELECT COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE = 'YES', EXTRA LIKE '%%GENERATED%%' OR GENERATION_EXPRESSION <> ''
FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION
"""

TABLE_EXISTS_SQL = ("SELECT count(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s "
                    "AND TABLE_TYPE = 'BASE TABLE'")

UNIQUE_KEYS_SQL = """
SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS
WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s AND NON_UNIQUE = 0
ORDER BY INDEX_NAME = 'PRIMARY' DESC, INDEX_NAME, SEQ_IN_INDEX
"""

PARENTS_SQL = """
SELECT DISTINCT REFERENCED_TABLE_SCHEMA, REFERENCED_TABLE_NAME FROM information_schema.KEY_COLUMN_USAGE
WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s AND REFERENCED_TABLE_NAME IS NOT NULL
"""


# ---------------------------------------------------------------- state tables (a target's)

STATE_DDL = [
    """CREATE TABLE IF NOT EXISTS tiersync_checkpoint (
    pipeline VARCHAR(191) NOT NULL PRIMARY KEY,
    position TEXT NOT NULL,
    batches BIGINT NOT NULL DEFAULT 0,
    changes BIGINT NOT NULL DEFAULT 0,
    updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin""",
    """CREATE TABLE IF NOT EXISTS tiersync_dead_letter (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    pipeline VARCHAR(191) NOT NULL,
    source_table VARCHAR(255) NOT NULL,
    target_table VARCHAR(255) NOT NULL,
    op VARCHAR(8) NOT NULL,
    `key` LONGTEXT,
    error TEXT NOT NULL,
    event LONGTEXT NOT NULL,
    position TEXT NOT NULL,
    created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    KEY tiersync_dead_letter_pipeline (pipeline, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin""",
    """CREATE TABLE IF NOT EXISTS tiersync_snapshot (
    pipeline VARCHAR(191) NOT NULL,
    source_table VARCHAR(255) NOT NULL,
    last_key LONGTEXT,
    `rows` BIGINT NOT NULL DEFAULT 0,
    done BOOLEAN NOT NULL DEFAULT FALSE,
    updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (pipeline, source_table)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin""",
    # written first in every apply transaction that carries an origin: binlog capture on this database reads
    # the transaction's origin from it (triggers read @tiersync_origin); one row per applying pipeline
    """CREATE TABLE IF NOT EXISTS tiersync_apply_origin (
    id INT NOT NULL PRIMARY KEY,
    origin VARCHAR(255) NOT NULL,
    n BIGINT NOT NULL DEFAULT 0
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin""",
    # one row per pipeline, locked by every apply transaction of it (a snapshot chunk's or a batch's)
    """CREATE TABLE IF NOT EXISTS tiersync_pipeline_lock (
    pipeline VARCHAR(191) NOT NULL PRIMARY KEY
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin""",
]

LOCK_PIPELINE_SQL = ("INSERT INTO tiersync_pipeline_lock (pipeline) VALUES (%s) "
                     "ON DUPLICATE KEY UPDATE pipeline = VALUES(pipeline)")

SAVE_CHECKPOINT_SQL = (
    "INSERT INTO tiersync_checkpoint (pipeline, position, batches, changes) VALUES (%s, %s, 1, %s) "
    "ON DUPLICATE KEY UPDATE position = VALUES(position), batches = batches + 1, "
    "changes = changes + VALUES(changes), updated_at = CURRENT_TIMESTAMP(6)")
STORE_CHECKPOINT_SQL = (
    "INSERT INTO tiersync_checkpoint (pipeline, position) VALUES (%s, %s) "
    "ON DUPLICATE KEY UPDATE position = VALUES(position), updated_at = CURRENT_TIMESTAMP(6)")
LOAD_CHECKPOINT_SQL = "SELECT position FROM tiersync_checkpoint WHERE pipeline = %s"

DEAD_LETTER_SQL = ("INSERT INTO tiersync_dead_letter (pipeline, source_table, target_table, op, `key`, error, event, "
                   "position) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)")
DEAD_LETTER_COLUMNS = ("id", "source_table", "target_table", "op", "key", "error", "created_at")
DEAD_LETTER_COUNT_SQL = "SELECT count(*) FROM tiersync_dead_letter WHERE pipeline = %s"
DEAD_LETTERS_SQL = ("SELECT id, source_table, target_table, op, `key`, error, created_at FROM tiersync_dead_letter "
                    "WHERE pipeline = %s ORDER BY id LIMIT %s")

SAVE_SNAPSHOT_SQL = (
    "INSERT INTO tiersync_snapshot (pipeline, source_table, last_key, `rows`, done) VALUES (%s, %s, %s, %s, %s) "
    "ON DUPLICATE KEY UPDATE last_key = VALUES(last_key), `rows` = VALUES(`rows`), done = VALUES(done), "
    "updated_at = CURRENT_TIMESTAMP(6)")
LOAD_SNAPSHOT_SQL = "SELECT last_key, `rows`, done FROM tiersync_snapshot WHERE pipeline = %s AND source_table = %s"

# Apply sessions: strict, so a value the column cannot hold is an error (a dead letter), never a silent
# truncation; NO_AUTO_VALUE_ON_ZERO, so a replicated id 0 stays 0; times in UTC; read committed keeps
# upserts from taking gap locks that would serialise concurrent writers for nothing.
APPLY_SESSION_SQL = [
    "SET SESSION sql_mode = 'STRICT_ALL_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION,"
    "NO_AUTO_VALUE_ON_ZERO'",
    "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
    "SET @tiersync_origin = NULL",
]

# the capture triggers read this session variable: changes applied by tiersync carry their origin
SET_ORIGIN_SQL = "SET @tiersync_origin = %s"
# …and binlog capture reads this row (n changes, so the row event is always logged)
MARK_ORIGIN_SQL = ("INSERT INTO tiersync_apply_origin (id, origin, n) VALUES (%s, %s, 1) "
                   "ON DUPLICATE KEY UPDATE origin = VALUES(origin), n = n + 1")


def _columns(columns: list[str]) -> str:
    return ", ".join(quote(c) for c in columns)


def upsert_sql_parts(table: TableId, columns: list[str], key: list[str]) -> tuple[str, str]:
    """What goes before and after the rows of a multi-row upsert."""
    updates = [c for c in columns if c not in key] or key[:1]  # all key: a no-op update keeps it idempotent
    action = ", ".join(f"{quote(c)} = VALUES({quote(c)})" for c in updates)
    return insert_sql_head(table, columns), f" ON DUPLICATE KEY UPDATE {action}"


def insert_sql_head(table: TableId, columns: list[str]) -> str:
    return f"INSERT INTO {qualified(table)} ({_columns(columns)}) VALUES "


def delete_sql(table: TableId, key: list[str], count: int) -> str:
    return f"DELETE FROM {qualified(table)} WHERE {_key_in(key, count)}"


def current_rows_sql(table: TableId, key: list[str], columns: list[str], count: int) -> str:
    """``count`` rows of ``table`` by key, locked until the transaction ends (conflict policies)."""
    return f"SELECT {_columns(columns)} FROM {qualified(table)} WHERE {_key_in(key, count)} FOR UPDATE"


def _key_in(key: list[str], count: int) -> str:
    if len(key) == 1:
        return f"{quote(key[0])} IN ({', '.join('%s' for _ in range(count))})"
    row = "(" + ", ".join("%s" for _ in key) + ")"
    return f"({_columns(key)}) IN ({', '.join(row for _ in range(count))})"


def truncate_sql(table: TableId) -> str:
    return f"DELETE FROM {qualified(table)}"  # TRUNCATE would commit the batch's transaction half-way


# ---------------------------------------------------------------- change log (a source's)

CHANGE_LOG = "tiersync_change_log"
CONSUMER = "tiersync_consumer"

CHANGE_LOG_DDL = [
    f"""CREATE TABLE IF NOT EXISTS {CHANGE_LOG} (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    tbl VARCHAR(255) NOT NULL,
    op CHAR(1) NOT NULL,
    `before` LONGTEXT,
    `after` LONGTEXT,
    origin VARCHAR(255),
    captured_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    KEY tiersync_change_log_tbl (tbl)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin""",
    f"""CREATE TABLE IF NOT EXISTS {CONSUMER} (
    name VARCHAR(191) NOT NULL PRIMARY KEY,
    floor_id BIGINT UNSIGNED NOT NULL DEFAULT 0,
    position TEXT,
    tables LONGTEXT,
    updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin""",
]

DROP_CHANGE_LOG_DDL = [f"DROP TABLE IF EXISTS {CHANGE_LOG}", f"DROP TABLE IF EXISTS {CONSUMER}"]

REGISTER_CONSUMER_SQL = (f"INSERT INTO {CONSUMER} (name, floor_id, tables) VALUES (%s, %s, %s) "
                         f"ON DUPLICATE KEY UPDATE tables = VALUES(tables)")
UPDATE_CONSUMER_SQL = (f"UPDATE {CONSUMER} SET floor_id = %s, position = %s, updated_at = CURRENT_TIMESTAMP(6) "
                       f"WHERE name = %s")

# Every row every consumer has passed, except the newest row of all: it keeps AUTO_INCREMENT from ever
# handing out an id a consumer has already passed (older servers reset it to max(id) + 1 on restart).
PURGE_FLOOR_SQL = f"SELECT min(floor_id) FROM {CONSUMER}"
PURGE_SQL = f"DELETE FROM {CHANGE_LOG} WHERE id <= %s AND id < %s ORDER BY id LIMIT 10000"


def _unread(gaps: int) -> str:
    """Rows above ``high`` plus the rows of the open gaps below it."""
    return " OR ".join(["id > %s"] + ["id BETWEEN %s AND %s"] * gaps)


def read_sql(tables: int, gaps: int) -> str:
    """Every unread row in id order; images only for the consumer's tables (other rows just move it on)."""
    names = ", ".join("%s" for _ in range(tables))
    return (f"SELECT id, tbl, op, IF(tbl IN ({names}), IFNULL(`before`, ''), NULL), "
            f"IF(tbl IN ({names}), `after`, NULL), origin, captured_at FROM {CHANGE_LOG} "
            f"WHERE {_unread(gaps)} ORDER BY id LIMIT %s")


def pending_sql(tables: int, gaps: int) -> str:
    return (f"SELECT count(*), min(captured_at) FROM {CHANGE_LOG} WHERE ({_unread(gaps)}) "
            f"AND tbl IN ({', '.join('%s' for _ in range(tables))})")


# The transactions that may still hold change-log ids the reader saw missing. INNODB_TRX is a cache that
# is not refreshed while it was read in the last 0.1 s, so the reader asks inside a transaction of its own
# that has written (MARK_READER_SQL): the answer is fresh only if it lists that transaction.
MARK_READER_SQL = f"UPDATE {CONSUMER} SET updated_at = CURRENT_TIMESTAMP(6) WHERE name = %s"
RUNNING_TRANSACTIONS_SQL = ("SELECT trx_id, trx_mysql_thread_id = CONNECTION_ID(), trx_started, trx_mysql_thread_id "
                            "FROM information_schema.INNODB_TRX")
HEAD_SQL = f"SELECT coalesce(max(id), 0) FROM {CHANGE_LOG}"

READER_SESSION_SQL = ["SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED"]


# rows some consumer has not passed (the newest row is kept after every consumer has passed it)
TABLE_PENDING_SQL = (f"SELECT tbl, count(*), min(captured_at) FROM {CHANGE_LOG} "
                     f"WHERE id > (SELECT coalesce(min(floor_id), 0) FROM {CONSUMER}) GROUP BY tbl")

INSTALLED_TRIGGERS_SQL = """
SELECT EVENT_OBJECT_TABLE, TRIGGER_NAME FROM information_schema.TRIGGERS
WHERE TRIGGER_SCHEMA = DATABASE() AND TRIGGER_NAME LIKE 'tiersync\\_%%'
"""

_OPS = (("c", "INSERT"), ("u", "UPDATE"), ("d", "DELETE"))


def trigger_name(table: TableId, op: str) -> str:
    name = f"tiersync_{table.name}_{op}"
    if len(name) > 64:
        import hashlib

        name = f"tiersync_{table.name[:40]}_{hashlib.sha1(table.name.encode()).hexdigest()[:10]}_{op}"
    return name


def image_sql(columns: tuple[ColumnInfo, ...], alias: str) -> str:
    """JSON_OBJECT of a row's stored columns, each written so that it reads back exactly (see values.py)."""
    from .values import image_expression

    parts = []
    for column in columns:
        if column.generated:
            continue  # computed by the database: never replicated as data
        parts.append(f"{literal(column.name)}, {image_expression(column.type, f'{alias}.{quote(column.name)}')}")
    return "JSON_OBJECT(" + ", ".join(parts) + ")"


def _skipped_key_change(table: TableInfo, key: tuple[str, ...]) -> str:
    """True in an AFTER UPDATE trigger when the key 'changed' but the old row is still there.

    MariaDB fires AFTER UPDATE triggers for rows UPDATE IGNORE skipped on a duplicate key: no change.
    """
    if not key:
        return "FALSE"
    changed = " OR ".join(f"NOT (OLD.{quote(c)} <=> NEW.{quote(c)})" for c in key)
    still = " AND ".join(f"t.{quote(c)} <=> OLD.{quote(c)}" for c in key)
    return f"(({changed}) AND EXISTS (SELECT 1 FROM {qualified(table.id)} t WHERE {still}))"


def trigger_ddl(table: TableInfo, key: tuple[str, ...]) -> list[str]:
    """The three AFTER triggers that record every change of ``table`` with its origin."""
    name = literal(str(table.id))
    target = qualified(table.id)
    log = CHANGE_LOG
    old, new = image_sql(table.columns, "OLD"), image_sql(table.columns, "NEW")
    bodies = {
        "c": f"INSERT INTO {log} (tbl, op, `after`, origin) VALUES ({name}, 'c', {new}, @tiersync_origin)",
        "u": (f"BEGIN\n  DECLARE old_image, new_image LONGTEXT;\n  SET old_image = {old};\n  SET new_image = {new};\n"
              f"  IF NOT (old_image <=> new_image) AND NOT {_skipped_key_change(table, key)} THEN\n"
              f"    INSERT INTO {log} (tbl, op, `before`, `after`, origin) "
              f"VALUES ({name}, 'u', old_image, new_image, @tiersync_origin);\n  END IF;\nEND"),
        "d": f"INSERT INTO {log} (tbl, op, `before`, origin) VALUES ({name}, 'd', {old}, @tiersync_origin)",
    }
    statements = []
    for op, event in _OPS:
        trigger = quote(trigger_name(table.id, op))
        statements.append(f"DROP TRIGGER IF EXISTS {trigger}")
        statements.append(f"CREATE TRIGGER {trigger} AFTER {event} ON {target} FOR EACH ROW\n{bodies[op]}")
    return statements


def drop_trigger_ddl(table: TableId) -> list[str]:
    return [f"DROP TRIGGER IF EXISTS {quote(trigger_name(table, op))}" for op, _ in _OPS]


# ---------------------------------------------------------------- full loads

def _key_after(key: tuple[str, ...]) -> str:
    """Rows after a key, in a form InnoDB turns into an index range (row constructors are not always)."""
    clauses = []
    for i in range(len(key)):
        equal = [f"t.{quote(c)} = %s" for c in key[:i]]
        clauses.append("(" + " AND ".join(equal + [f"t.{quote(key[i])} > %s"]) + ")")
    return "(" + " OR ".join(clauses) + ")"


def key_params(after: tuple, key: tuple[str, ...]) -> list:
    """Parameters for :func:`_key_after`."""
    params: list = []
    for i in range(len(key)):
        params += list(after[:i]) + [after[i]]
    return params


def chunk_sql(table: TableInfo, key: tuple[str, ...], after: bool, where: str | None) -> str:
    """Rows above a key, in key order, as the same JSON images the capture triggers write."""
    conditions = []
    if after:
        conditions.append(_key_after(key))
    if where:
        conditions.append(f"({where})")
    clause = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    order = ", ".join(f"t.{quote(c)}" for c in key)
    return f"SELECT {image_sql(table.columns, 't')} FROM {qualified(table.id)} t{clause} ORDER BY {order} LIMIT %s"


def keys_sql(table: TableId, key: tuple[str, ...], after: bool) -> str:
    clause = f" WHERE {_key_after(key)}" if after else ""
    cols = ", ".join(f"t.{quote(c)}" for c in key)
    return f"SELECT {cols} FROM {qualified(table)} t{clause} ORDER BY {cols} LIMIT %s"


def existing_keys_sql(table: TableId, key: tuple[str, ...], count: int) -> str:
    cols = ", ".join(f"t.{quote(c)}" for c in key)
    if len(key) == 1:
        return f"SELECT {cols} FROM {qualified(table)} t WHERE {cols} IN ({', '.join('%s' for _ in range(count))})"
    row = "(" + ", ".join("%s" for _ in key) + ")"
    return f"SELECT {cols} FROM {qualified(table)} t WHERE ({cols}) IN ({', '.join(row for _ in range(count))})"


def count_sql(table: TableId, where: str | None) -> str:
    return f"SELECT count(*) FROM {qualified(table)}" + (f" WHERE ({where})" if where else "")


def rows_by_key_sql(table: TableInfo, key: tuple[str, ...], count: int) -> str:
    """The rows with these keys, as the same JSON images the capture triggers write."""
    cols = ", ".join(f"t.{quote(c)}" for c in key)
    if len(key) == 1:
        condition = f"{cols} IN ({', '.join('%s' for _ in range(count))})"
    else:
        row = "(" + ", ".join("%s" for _ in key) + ")"
        condition = f"({cols}) IN ({', '.join(row for _ in range(count))})"
    return f"SELECT {image_sql(table.columns, 't')} FROM {qualified(table.id)} t WHERE {condition}"


# ---------------------------------------------------------------- reconcile (the checksum SQL: reconcile_sql.py)

RECONCILE_RUN_DDL = """CREATE TABLE IF NOT EXISTS tiersync_reconcile_run (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    pipeline VARCHAR(191) NOT NULL,
    source_table VARCHAR(255) NOT NULL,
    started_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    finished_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    run_by VARCHAR(255) NOT NULL,
    mode VARCHAR(32) NOT NULL,
    result VARCHAR(32) NOT NULL,
    missing BIGINT NOT NULL,
    extra BIGINT NOT NULL,
    different BIGINT NOT NULL,
    in_flight BIGINT NOT NULL,
    repaired LONGTEXT,
    report LONGTEXT,
    KEY tiersync_reconcile_run_pipeline (pipeline, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"""
RECONCILE_RUN_COLUMNS = ("pipeline", "source_table", "started_at", "run_by", "mode", "result", "missing", "extra",
                         "different", "in_flight", "repaired", "report")
SAVE_RECONCILE_RUN_SQL = (f"INSERT INTO tiersync_reconcile_run ({', '.join(RECONCILE_RUN_COLUMNS)}) "
                          f"VALUES ({', '.join('%s' for _ in RECONCILE_RUN_COLUMNS)})")
RECONCILE_RUNS_SQL = (f"SELECT id, finished_at, {', '.join(c for c in RECONCILE_RUN_COLUMNS if c != 'report')} "
                      f"FROM tiersync_reconcile_run WHERE pipeline = %s ORDER BY id DESC LIMIT %s")


def unapplied_sql(tables: int, gaps: int, with_head: bool) -> str:
    """Change-log rows of ``tables`` a position has not delivered (above ``high`` or in its open gaps), with their
    images; with a head, only ids up to it (every change committed when the head was read has an id up to it)."""
    head = " AND id <= %s" if with_head else ""
    return (f"SELECT tbl, `before`, `after` FROM {CHANGE_LOG} WHERE ({_unread(gaps)}) "
            f"AND tbl IN ({', '.join('%s' for _ in range(tables))}){head} ORDER BY id LIMIT %s")
