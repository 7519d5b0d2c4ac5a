"""Every SQL string and value rule of PostgreSQL that tiersync uses."""

from __future__ import annotations

import hashlib
import re
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any, Callable
from uuid import UUID

from engine.event import TableId
from engine.schema import TableInfo


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def qualified(table: TableId) -> str:
    return f"{quote(table.schema)}.{quote(table.name)}" if table.schema else quote(table.name)


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def short_name(prefix: str, table: TableId) -> str:
    """A deterministic identifier under PostgreSQL's 63-byte limit."""
    base = re.sub(r"[^A-Za-z0-9_]", "_", f"{table.schema}_{table.name}")
    name = f"{prefix}_{base}"
    if len(name.encode()) <= 63:
        return name
    digest = hashlib.sha1(str(table).encode()).hexdigest()[:10]
    return f"{prefix}_{base[:40]}_{digest}"


# ---------------------------------------------------------------- catalog

DESCRIBE_SQL = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull, a.attgenerated <> ''
FROM pg_attribute a
WHERE a.attrelid = %(rel)s::regclass AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

PRIMARY_KEY_SQL = """
SELECT a.attname
FROM pg_index i
JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = %(rel)s::regclass AND i.indisprimary
ORDER BY k.ord
"""

PARENTS_SQL = """
SELECT n.nspname, c.relname
FROM pg_constraint f
JOIN pg_class c ON c.oid = f.confrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE f.conrelid = %(rel)s::regclass AND f.contype = 'f'
"""

TABLE_EXISTS_SQL = "SELECT to_regclass(%(rel)s) IS NOT NULL"

UNIQUE_KEYS_SQL = """
SELECT array_agg(a.attname ORDER BY k.ord)
FROM pg_index i
JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = %(rel)s::regclass AND i.indisunique AND i.indpred IS NULL
GROUP BY i.indexrelid
"""


# ---------------------------------------------------------------- change log and state tables

def change_log_ddl(schema: str) -> list[str]:
    s = quote(schema)
    # CACHE 1 matters: with a per-session sequence cache, ids would stop following
    # commit order for changes to the same row, and the reader relies on that.
    return [
        DDL_LOCK_SQL,
        f"CREATE SCHEMA IF NOT EXISTS {s}",
        f"""CREATE TABLE IF NOT EXISTS {s}.tiersync_change_log (
    id bigint GENERATED ALWAYS AS IDENTITY (CACHE 1) PRIMARY KEY,
    txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    tbl text NOT NULL,
    op "char" NOT NULL,
    pk json,
    before json,
    after json,
    origin text,
    captured_at timestamptz NOT NULL DEFAULT clock_timestamp()
)""",
        f"""CREATE TABLE IF NOT EXISTS {s}.tiersync_consumer (
    name text PRIMARY KEY,
    prev pg_snapshot NOT NULL,
    cur pg_snapshot NOT NULL,
    last_id bigint NOT NULL,
    tables text[],
    updated_at timestamptz NOT NULL DEFAULT now()
)""",
    ]


def register_consumer_sql(schema: str) -> str:
    return (f"INSERT INTO {quote(schema)}.tiersync_consumer (name, prev, cur, last_id, tables) "
            f"VALUES (%(name)s, %(prev)s::pg_snapshot, %(cur)s::pg_snapshot, %(last_id)s, %(tables)s) "
            f"ON CONFLICT (name) DO UPDATE SET tables = EXCLUDED.tables")


# serialises tiersync's own DDL: concurrent CREATE … IF NOT EXISTS can still collide in the catalog
DDL_LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtext('tiersync ddl'))"


def state_ddl(schema: str) -> list[str]:
    s = quote(schema)
    return [
        DDL_LOCK_SQL,
        f"CREATE SCHEMA IF NOT EXISTS {s}",
        f"""CREATE TABLE IF NOT EXISTS {s}.tiersync_checkpoint (
    pipeline text PRIMARY KEY,
    position text NOT NULL,
    batches bigint NOT NULL DEFAULT 0,
    changes bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
)""",
        snapshot_state_ddl(schema),
        f"""CREATE TABLE IF NOT EXISTS {s}.tiersync_dead_letter (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pipeline text NOT NULL,
    source_table text NOT NULL,
    target_table text NOT NULL,
    op text NOT NULL,
    key jsonb,
    error text NOT NULL,
    event jsonb NOT NULL,
    position text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)""",
    ]


def snapshot_state_ddl(schema: str) -> str:
    return f"""CREATE TABLE IF NOT EXISTS {quote(schema)}.tiersync_snapshot (
    pipeline text NOT NULL,
    source_table text NOT NULL,
    last_key jsonb,
    rows bigint NOT NULL DEFAULT 0,
    done boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline, source_table)
)"""


def save_snapshot_sql(schema: str) -> str:
    return (f"INSERT INTO {quote(schema)}.tiersync_snapshot (pipeline, source_table, last_key, rows, done) "
            f"VALUES (%s, %s, %s, %s, %s) ON CONFLICT (pipeline, source_table) DO UPDATE SET "
            f"last_key = EXCLUDED.last_key, rows = EXCLUDED.rows, done = EXCLUDED.done, updated_at = now()")


def load_snapshot_sql(schema: str) -> str:
    return (f"SELECT last_key::text, rows, done FROM {quote(schema)}.tiersync_snapshot "
            f"WHERE pipeline = %s AND source_table = %s")


LOCK_PIPELINE_SQL = "SELECT pg_advisory_xact_lock(hashtext('tiersync pipeline ' || %s))"


def chunk_sql(table: TableId, key: tuple[str, ...], after: bool, where: str | None) -> str:
    """Rows above a key, in key order, as JSON images (the same text form the capture triggers write)."""
    cols = ", ".join(f"t.{quote(c)}" for c in key)
    conditions = []
    if after:
        conditions.append(f"({cols}) > ({', '.join('%s' for _ in key)})")
    if where:
        conditions.append(f"({where})")
    clause = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    return f"SELECT row_to_json(t)::text FROM {qualified(table)} t{clause} ORDER BY {cols} LIMIT %s"


def keys_sql(table: TableId, key: tuple[str, ...], after: bool) -> str:
    cols = ", ".join(quote(c) for c in key)
    clause = f" WHERE ({cols}) > ({', '.join('%s' for _ in key)})" if after else ""
    return f"SELECT {cols} FROM {qualified(table)}{clause} ORDER BY {cols} LIMIT %s"


def existing_keys_sql(table: TableId, key: tuple[str, ...], count: int) -> str:
    cols = ", ".join(quote(c) for c in key)
    rows = ", ".join("(" + ", ".join("%s" for _ in key) + ")" for _ in range(count))
    return f"SELECT {cols} FROM {qualified(table)} WHERE ({cols}) IN ({rows})"


def count_sql(table: TableId, where: str | None) -> str:
    return f"SELECT count(*) FROM {qualified(table)}" + (f" WHERE ({where})" if where else "")


DEAD_LETTER_COLUMNS = ("id", "source_table", "target_table", "op", "key", "error", "created_at")


def load_checkpoint_sql(schema: str) -> str:
    return f"SELECT position FROM {quote(schema)}.tiersync_checkpoint WHERE pipeline = %s"


def dead_letter_count_sql(schema: str) -> str:
    return f"SELECT count(*) FROM {quote(schema)}.tiersync_dead_letter WHERE pipeline = %s"


def dead_letters_sql(schema: str) -> str:
    return (f"SELECT {', '.join(DEAD_LETTER_COLUMNS)} FROM {quote(schema)}.tiersync_dead_letter "
            f"WHERE pipeline = %s ORDER BY id LIMIT %s")


def save_checkpoint_sql(schema: str) -> str:
    return (f"INSERT INTO {quote(schema)}.tiersync_checkpoint AS c (pipeline, position, batches, changes, updated_at) "
            f"VALUES (%s, %s, 1, %s, now()) ON CONFLICT (pipeline) DO UPDATE SET position = EXCLUDED.position, "
            f"batches = c.batches + 1, changes = c.changes + EXCLUDED.changes, updated_at = now()")


def dead_letter_insert_sql(schema: str) -> str:
    return (f"INSERT INTO {quote(schema)}.tiersync_dead_letter "
            f"(pipeline, source_table, target_table, op, key, error, event, position) "
            f"VALUES (%s, %s, %s, %s, %s, %s, %s, %s)")


# ---------------------------------------------------------------- capture triggers

def capture_function_name(table: TableId) -> str:
    return short_name("capture", table)


TRIGGER_NAME = "tiersync_capture"


def trigger_ddl(schema: str, table: TableInfo, key: tuple[str, ...]) -> list[str]:
    """The function and trigger that record every change of ``table`` in the change log."""
    log = f"{quote(schema)}.tiersync_change_log"
    fn = f"{quote(schema)}.{quote(capture_function_name(table.id))}"
    name = literal(str(table.id))
    origin = "NULLIF(current_setting('tiersync.origin', true), '')"

    def key_of(image: str) -> str:
        return "json_build_array(" + ", ".join(f"{image}.{quote(c)}" for c in key) + ")" if key else "NULL"

    # row_to_json prints floats in the writing session's extra_float_digits; a session that lowered it
    # would lose digits, so tables with float columns pin it (a per-call cost, paid only where needed)
    has_floats = any(c.type in ("real", "double precision") or c.type.startswith(("real[", "double precision["))
                     for c in table.columns)
    pin = "\nSET extra_float_digits = 1" if has_floats else ""
    body = f"""CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger
LANGUAGE plpgsql{pin} AS $tiersync$
DECLARE
    old_image json;
    new_image json;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO {log} (tbl, op, pk, after, origin)
        VALUES ({name}, 'c', {key_of('NEW')}, row_to_json(NEW), {origin});
    ELSIF TG_OP = 'UPDATE' THEN
        old_image := row_to_json(OLD);
        new_image := row_to_json(NEW);
        IF old_image::text = new_image::text THEN
            RETURN NULL;  -- nothing changed: nothing to replicate
        END IF;
        INSERT INTO {log} (tbl, op, pk, before, after, origin)
        VALUES ({name}, 'u', {key_of('NEW')}, old_image, new_image, {origin});
    ELSE
        INSERT INTO {log} (tbl, op, pk, before, origin)
        VALUES ({name}, 'd', {key_of('OLD')}, row_to_json(OLD), {origin});
    END IF;
    RETURN NULL;
END
$tiersync$"""
    trigger = (f"CREATE OR REPLACE TRIGGER {TRIGGER_NAME} AFTER INSERT OR UPDATE OR DELETE ON {qualified(table.id)} "
               f"FOR EACH ROW EXECUTE FUNCTION {fn}()")
    return [body, trigger]


def drop_trigger_ddl(schema: str, table: TableId, table_exists: bool) -> list[str]:
    statements = [f"DROP TRIGGER IF EXISTS {TRIGGER_NAME} ON {qualified(table)}"] if table_exists else []
    statements.append(f"DROP FUNCTION IF EXISTS {quote(schema)}.{quote(capture_function_name(table))}()")
    return statements


def drop_change_log_ddl(schema: str) -> list[str]:
    s = quote(schema)
    return [f"DROP TABLE IF EXISTS {s}.tiersync_change_log", f"DROP TABLE IF EXISTS {s}.tiersync_consumer",
            # the schema goes too, but only if nothing else lives in it (e.g. a target's checkpoint tables)
            f"""DO $tiersync$ BEGIN
    IF to_regnamespace({literal(schema)}) IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM pg_class WHERE relnamespace = to_regnamespace({literal(schema)}))
       AND NOT EXISTS (SELECT 1 FROM pg_proc WHERE pronamespace = to_regnamespace({literal(schema)}))
       AND NOT EXISTS (SELECT 1 FROM pg_type WHERE typnamespace = to_regnamespace({literal(schema)})) THEN
        DROP SCHEMA {s};
    END IF;
END $tiersync$"""]


INSTALLED_TRIGGERS_SQL = """
SELECT n.nspname, c.relname
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE t.tgname = 'tiersync_capture' AND NOT t.tgisinternal
"""


# ---------------------------------------------------------------- reading the change log

# the rows a position has not delivered yet are those of transactions visible in `cur` but not in `prev`
_IN_BATCH = ("pg_visible_in_snapshot(l.txid, %(cur)s::pg_snapshot) "
             "AND NOT pg_visible_in_snapshot(l.txid, %(prev)s::pg_snapshot)")
# …and a consumer `c` has applied a row when the row is visible in its `prev`, or in its `cur` up to `last_id`
_APPLIED_BY_C = ("(pg_visible_in_snapshot(l.txid, c.prev) OR "
                 "(pg_visible_in_snapshot(l.txid, c.cur) AND l.id <= c.last_id))")
_APPLIED_AT = ("(pg_visible_in_snapshot(l.txid, %(prev)s::pg_snapshot) OR "
               "(pg_visible_in_snapshot(l.txid, %(cur)s::pg_snapshot) AND l.id <= %(last_id)s))")


def read_sql(schema: str) -> str:
    return (f"SELECT l.id, l.txid::text::bigint, l.tbl, l.op, l.before::text, l.after::text, l.origin, "
            f"l.captured_at FROM {quote(schema)}.tiersync_change_log l "
            f"WHERE l.id > %(last_id)s AND l.tbl = ANY(%(tables)s) AND {_IN_BATCH} ORDER BY l.id LIMIT %(limit)s")


# The change log changes too fast for its statistics to help: without these the planner may scan every
# pending row and sort them to return the first few thousand (quadratic over a backlog). Walking the
# primary key in order and stopping at LIMIT is always right for this query.
# JIT compiling these small, frequent statements costs more than running them.
READER_SESSION_SQL = ["SET enable_sort = off", "SET enable_bitmapscan = off", "SET enable_seqscan = off",
                      "SET jit = off"]
ACK_SESSION_SQL = ["SET jit = off"]

# A staging table holds one batch and has no statistics: joining it to the target must probe the
# target's key index row by row, never hash or merge the whole target.
APPLY_SESSION_SQL = ["SET TIME ZONE 'UTC'",  # naive timestamps written into timestamptz mean UTC
                     "SET enable_hashjoin = off", "SET enable_mergejoin = off", "SET jit = off"]

SNAPSHOT_SQL = "SELECT pg_current_snapshot()::text"


def consumer_update_sql(schema: str) -> str:
    return (f"UPDATE {quote(schema)}.tiersync_consumer SET prev = %(prev)s::pg_snapshot, "
            f"cur = %(cur)s::pg_snapshot, last_id = %(last_id)s, updated_at = now() WHERE name = %(name)s")


def _applied_by_every_consumer(s: str) -> str:
    """True for a change-log row ``l`` that every registered consumer of its table has applied."""
    return (f"NOT EXISTS (SELECT 1 FROM {s}.tiersync_consumer c WHERE (c.tables IS NULL OR l.tbl = ANY(c.tables)) "
            f"AND NOT {_APPLIED_BY_C})")


def purge_window_sql(schema: str) -> str:
    """Delete the rows of one applied batch that every registered consumer of their table has applied.

    The window (``first_id``..``last_id`` of the batch) keeps this an index range scan:
    a purge that started from the lowest id would walk every dead index entry left by earlier purges.
    """
    s = quote(schema)
    return (f"DELETE FROM {s}.tiersync_change_log l WHERE l.id >= %(first_id)s AND l.id <= %(last_id)s "
            f"AND {_IN_BATCH} AND {_applied_by_every_consumer(s)}")


def purge_sweep_sql(schema: str) -> str:
    """Delete every row all consumers have applied (a full scan: run rarely, for rows windows missed)."""
    s = quote(schema)
    return f"DELETE FROM {s}.tiersync_change_log l WHERE {_applied_by_every_consumer(s)}"


def pending_sql(schema: str) -> str:
    return (f"SELECT count(*), min(captured_at) FROM {quote(schema)}.tiersync_change_log l "
            f"WHERE l.tbl = ANY(%(tables)s) AND NOT {_APPLIED_AT}")


def table_pending_sql(schema: str) -> str:
    return (f"SELECT tbl, count(*), min(captured_at) FROM {quote(schema)}.tiersync_change_log "
            f"WHERE tbl = ANY(%(tables)s) GROUP BY tbl")


# ---------------------------------------------------------------- applying

def stage_name(table: TableId, columns: tuple[str, ...]) -> str:
    digest = hashlib.sha1(("\0".join((str(table),) + columns)).encode()).hexdigest()[:12]
    return f"tiersync_stage_{digest}"


def create_stage_sql(stage: str, table: TableId, columns: list[str]) -> str:
    cols = ", ".join(quote(c) for c in columns)
    return (f"CREATE TEMP TABLE IF NOT EXISTS {quote(stage)} ON COMMIT DELETE ROWS AS "
            f"SELECT {cols} FROM {qualified(table)} WITH NO DATA")


def copy_sql(stage: str, columns: list[str]) -> str:
    return f"COPY {quote(stage)} ({', '.join(quote(c) for c in columns)}) FROM STDIN"


def copy_into_sql(table: TableId, columns: list[str]) -> str:
    """COPY straight into a target table (rows that are only inserted: no staging)."""
    return f"COPY {qualified(table)} ({', '.join(quote(c) for c in columns)}) FROM STDIN"


def truncate_sql(table: TableId) -> str:
    return f"TRUNCATE {qualified(table)}"


def upsert_from_stage_sql(stage: str, table: TableId, columns: list[str], key: list[str]) -> str:
    cols = ", ".join(quote(c) for c in columns)
    updates = [c for c in columns if c not in key]
    action = ("DO UPDATE SET " + ", ".join(f"{quote(c)} = EXCLUDED.{quote(c)}" for c in updates)
              if updates else "DO NOTHING")
    conflict = ", ".join(quote(c) for c in key)
    return (f"INSERT INTO {qualified(table)} ({cols}) SELECT {cols} FROM {quote(stage)} "
            f"ON CONFLICT ({conflict}) {action}")


KEYS_PER_READ = 1000  # keys per conflict-policy read


def lock_writers_sql(table: TableId) -> str:
    """Keep other writers of ``table`` out until the transaction ends (conflict policies: ``FOR UPDATE`` cannot
    lock a row that does not exist yet, and a row inserted meanwhile would be overwritten unseen). Readers go on;
    the mode conflicts with itself, so two appliers of one table take turns."""
    return f"LOCK TABLE {qualified(table)} IN SHARE ROW EXCLUSIVE MODE"


def current_rows_sql(table: TableId, key: list[str], columns: list[str], count: int) -> str:
    """``count`` rows of ``table`` by key, locked until the transaction ends (conflict policies)."""
    row = "(" + ", ".join("%s" for _ in key) + ")"
    return (f"SELECT {', '.join(quote(c) for c in columns)} FROM {qualified(table)} "
            f"WHERE ({', '.join(quote(c) for c in key)}) IN ({', '.join(row for _ in range(count))}) FOR UPDATE")


def delete_from_stage_sql(stage: str, table: TableId, key: list[str]) -> str:
    match = " AND ".join(f"t.{quote(c)} = s.{quote(c)}" for c in key)
    return f"DELETE FROM {qualified(table)} t USING {quote(stage)} s WHERE {match}"


CAN_USE_ORIGINS_SQL = ("SELECT has_function_privilege('pg_replication_origin_session_setup(text)', 'execute') "
                       "AND has_function_privilege('pg_replication_origin_create(text)', 'execute')")
CREATE_ORIGIN_SQL = "SELECT pg_replication_origin_create(%s) WHERE pg_replication_origin_oid(%s) IS NULL"
RESET_ORIGIN_SQL = "SELECT pg_replication_origin_session_reset()"
SETUP_ORIGIN_SQL = "SELECT pg_replication_origin_session_setup(%s)"
# what an apply session can do to tell logical capture where its rows came from (see origins.py)
ORIGIN_MESSAGES_SQL = ("SELECT current_setting('server_version_num')::int, current_setting('wal_level') = 'logical', "
                       "has_function_privilege('pg_logical_emit_message(boolean, text, text)', 'execute')")
EMIT_ORIGIN_MESSAGE_SQL = "SELECT pg_logical_emit_message(true, %s, %s)"
# per-node origins of a pipeline whose last transaction every logical slot of the cluster has confirmed
DROPPABLE_LEGACY_ORIGINS_SQL = """
SELECT o.roname FROM pg_replication_origin o
LEFT JOIN pg_replication_origin_status s ON s.local_id = o.roident
WHERE starts_with(o.roname, %s)
  AND NOT EXISTS (SELECT 1 FROM pg_replication_slots r WHERE r.slot_type = 'logical'
                  AND coalesce(r.confirmed_flush_lsn, '0/0') < coalesce(s.local_lsn, '0/0'))"""
DROP_ORIGIN_SQL = "SELECT pg_replication_origin_drop(%s)"


def set_origin_sql() -> str:
    return "SELECT set_config('tiersync.origin', %s, true)"


# ---------------------------------------------------------------- values

def json_number(value: Decimal) -> Any:
    """A number of a JSON document: a plain float where that writes back as the same text, else exact."""
    as_float = float(value)
    return as_float if repr(as_float) == str(value) else value  # 1.10, 1E+20, 0.1234567890123456789 stay Decimal


def json_document(value: Any) -> Any:
    """JSON documents are parsed with exact decimals; a number stays Decimal where a float would change it."""
    if isinstance(value, Decimal):
        return json_number(value)
    if isinstance(value, list):
        return [json_document(v) for v in value]
    if isinstance(value, dict):
        return {k: json_document(v) for k, v in value.items()}
    return value


def _keep_text_on_failure(parse: Callable[[str], Any]) -> Callable[[Any], Any]:
    """Values Python cannot hold (infinity dates, NaN …) travel as PostgreSQL text and are parsed by the target."""
    def convert(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return parse(value)
        except ValueError:
            return value
    return convert


def _decimal(value: Any) -> Any:
    return value if isinstance(value, Decimal) else Decimal(str(value))


def _float(value: Any) -> Any:
    return float(value)


def _bytea(value: Any) -> Any:
    return bytes.fromhex(value[2:]) if isinstance(value, str) and value.startswith("\\x") else value


_SCALAR_DECODERS: list[tuple[re.Pattern, Callable[[Any], Any] | None]] = [
    (re.compile(r"^(smallint|integer|bigint|boolean|text|character varying.*|character.*|\"char\")$"), None),
    (re.compile(r"^numeric"), _decimal),
    (re.compile(r"^(real|double precision)$"), _float),
    (re.compile(r"^date$"), _keep_text_on_failure(date.fromisoformat)),
    (re.compile(r"^time(\(\d\))? without time zone$"), _keep_text_on_failure(time.fromisoformat)),
    (re.compile(r"^timestamp(\(\d\))? (with|without) time zone$"), _keep_text_on_failure(datetime.fromisoformat)),
    (re.compile(r"^jsonb?$"), json_document),
    (re.compile(r"^bytea$"), _bytea),
    (re.compile(r"^uuid$"), _keep_text_on_failure(UUID)),
]


def _leaves(value: Any):
    if isinstance(value, list):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


def _as_text(value: Any) -> Any:
    if isinstance(value, list):
        return [_as_text(v) for v in value]
    return value if value is None or isinstance(value, str) else str(value)


def value_decoder(type_name: str) -> Callable[[Any], Any] | None:
    """How a value of ``type_name`` in a JSON row image becomes its Python value (None: as it is)."""
    if type_name.endswith("[]"):
        element = value_decoder(type_name[:-2])
        if element is None:
            return None

        def decode_elements(value: Any) -> Any:
            if isinstance(value, list):
                return [decode_elements(v) for v in value]
            return None if value is None else element(value)

        def decode_array(value: Any) -> Any:
            decoded = decode_elements(value)
            if len({type(v) for v in _leaves(decoded) if v is not None}) > 1:
                # some elements stayed PostgreSQL text (infinity dates …): psycopg cannot write a list of
                # mixed types, so the whole array travels as text and the target parses it
                return _as_text(value)
            return decoded
        return decode_array
    for pattern, decoder in _SCALAR_DECODERS:
        if pattern.match(type_name):
            return decoder
    return None  # enums, domains, intervals, network types …: PostgreSQL text, parsed by the target


def is_json_type(type_name: str) -> bool:
    return type_name in ("json", "jsonb")


# ---------------------------------------------------------------- reconciliation (see engine.reconcile)

_INT_TYPES = ("smallint", "integer", "bigint")


def column_kind(type_name: str) -> str:
    """The canonical kind reconcile compares a column of this type as."""
    t = type_name.lower()
    if t in _INT_TYPES:
        return "int"
    if t.startswith("numeric"):
        return "decimal"
    if t in ("real", "double precision"):
        return "float"
    if t == "boolean":
        return "bool"
    if t.startswith("timestamp"):
        return "timestamp"
    if t == "date":
        return "date"
    if t.startswith("time") and t.endswith("without time zone"):
        return "time"
    if t in ("json", "jsonb"):
        return "json"
    if t == "bytea":
        return "bytes"
    return "text"


def normalised_sql(ref: str, type_name: str, kind: str) -> str:
    """SQL for the canonical text of column ``ref`` (of ``type_name``) as ``kind``: engine.reconcile.normalise.

    The session's time zone must be UTC (naive text read as a timestamp means UTC).
    """
    own = column_kind(type_name)
    if kind == "int":
        return f"({ref})::text" if own == "int" else f"trim_scale(({ref})::numeric)::text"
    if kind == "decimal":
        return f"trim_scale(({ref})::numeric)::text"
    if kind == "float":  # a real goes through its shortest text, as tiersync replicates it (1.1, not 1.10000002)
        value = f"({ref})::text::float8" if own == "float" and type_name.lower() == "real" else f"({ref})::float8"
        return f"encode(float8send({value} + 0.0::float8), 'hex')"
    if kind == "bool":
        return f"({ref})::boolean::text"
    if kind == "timestamp":  # ISO text (DateStyle ISO): fractions without trailing zeros, like normalise
        if type_name.lower().startswith("timestamp") and "with time zone" not in type_name.lower():
            return f"({ref})::timestamp::text"
        return f"(({ref})::timestamptz AT TIME ZONE 'UTC')::text"
    if kind == "date":
        return f"({ref})::date::text"
    if kind == "time":
        return f"({ref})::time::text"
    if kind == "json":
        return f"({ref})::jsonb::text"
    if kind == "bytes":
        return f"encode(({ref})::bytea, 'hex')"
    return f"({ref})::text"


_SAFE_KINDS = ("int", "decimal", "float", "bool", "timestamp", "date", "time", "bytes")  # engine.reconcile.SAFE_KINDS


def _encoded(columns, image: str) -> str:
    """The columns' canonical texts joined as engine.reconcile.encode_values does (each value computed once)."""
    if not columns:
        return "''"
    parts = []
    for c in columns:
        value = normalised_sql(f"{image}.{quote(c.name)}", c.type, c.kind)
        if c.kind not in _SAFE_KINDS:
            value = f"replace(replace({value}, '\\', '\\\\'), ',', '\\,')"
        parts.append(f"coalesce({value}, '\\N')")
    return " || ',' || ".join(parts)


def _hash60(expr: str) -> str:
    return f"('x' || substr(md5({expr}), 1, 15))::bit(60)::bigint"


def _key_hash(spec) -> str:
    if len(spec.key) == 1 and spec.key[0].kind == "int":  # engine.reconcile.key_hash: the key itself
        return f"(t.{quote(spec.key[0].name)})::bigint & 1152921504606846975"
    return _hash60(_encoded(spec.key, "t"))


def _hashed_rows(spec, with_keys: bool) -> str:
    keys = "".join(f", t.{quote(c.name)} AS _k{i}" for i, c in enumerate(spec.key)) if with_keys else ""
    where = f" WHERE ({spec.where})" if spec.where else ""
    inner = (f"SELECT {_encoded(spec.key, 't')} AS k, {_key_hash(spec)} AS kh, {_encoded(spec.columns, 't')} AS r"
             f"{keys} FROM {qualified(spec.table.id)} t{where}")
    key_out = "".join(f", s._k{i}" for i in range(len(spec.key))) if with_keys else ""
    row_hash = _hash60("s.k || '|' || s.r")
    return f"SELECT s.k, s.kh, {row_hash} AS rh{key_out} FROM ({inner}) s"


def _mask(bits: int) -> int:
    return (1 << bits) - 1


def bucket_sums_sql(spec, bits: int, within_bits: int | None) -> str:
    """Per bucket (``kh & (2^bits - 1)``): row count and the exact sum of ``rh`` (sum(bigint) is numeric).

    ``rh`` is used once: the planner inlines it, and a second aggregate over it would hash every row twice.
    """
    within = f" WHERE h.kh & {_mask(within_bits)} = ANY(%s::bigint[])" if within_bits is not None else ""
    return (f"SELECT h.kh & {_mask(bits)}, count(*), sum(h.rh) "
            f"FROM ({_hashed_rows(spec, False)}) h{within} GROUP BY 1")


def row_hashes_sql(spec, within_bits: int) -> str:
    keys = "".join(f", h._k{i}" for i in range(len(spec.key)))
    return (f"SELECT h.k, h.rh{keys} FROM ({_hashed_rows(spec, True)}) h "
            f"WHERE h.kh & {_mask(within_bits)} = ANY(%s::bigint[])")


CHECKSUM_SESSION_SQL = ["SET TIME ZONE 'UTC'", "SET DateStyle = 'ISO, YMD'", "SET IntervalStyle = 'postgres'",
                        "SET extra_float_digits = 1", "SET jit = off", "SET enable_sort = off"]


def rows_by_key_sql(table: TableId, key: tuple[str, ...], count: int) -> str:
    cols = ", ".join(f"t.{quote(c)}" for c in key)
    rows = ", ".join("(" + ", ".join("%s" for _ in key) + ")" for _ in range(count))
    return f"SELECT row_to_json(t)::text FROM {qualified(table)} t WHERE ({cols}) IN ({rows})"


def unapplied_sql(schema: str, with_head: bool) -> str:
    """Change-log rows of ``tables`` the consumer at a position has not applied (committed at ``head``)."""
    head = " AND pg_visible_in_snapshot(l.txid, %(head)s::pg_snapshot)" if with_head else ""
    return (f"SELECT l.tbl, l.pk::text FROM {quote(schema)}.tiersync_change_log l "
            f"WHERE l.tbl = ANY(%(tables)s) AND NOT {_APPLIED_AT}{head} LIMIT %(limit)s")


def reconcile_run_ddl(schema: str) -> list[str]:
    return [DDL_LOCK_SQL, f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}",
            f"""CREATE TABLE IF NOT EXISTS {quote(schema)}.tiersync_reconcile_run (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pipeline text NOT NULL,
    source_table text NOT NULL,
    started_at timestamptz NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT now(),
    run_by text NOT NULL,
    mode text NOT NULL,
    result text NOT NULL,
    missing bigint NOT NULL,
    extra bigint NOT NULL,
    different bigint NOT NULL,
    in_flight bigint NOT NULL,
    repaired jsonb,
    report jsonb
)"""]


RECONCILE_RUN_COLUMNS = ("pipeline", "source_table", "started_at", "run_by", "mode", "result", "missing", "extra",
                         "different", "in_flight", "repaired", "report")


def save_reconcile_run_sql(schema: str) -> str:
    return (f"INSERT INTO {quote(schema)}.tiersync_reconcile_run ({', '.join(RECONCILE_RUN_COLUMNS)}) "
            f"VALUES ({', '.join('%s' for _ in RECONCILE_RUN_COLUMNS)})")


def reconcile_runs_sql(schema: str) -> str:
    return (f"SELECT id, finished_at, {', '.join(c for c in RECONCILE_RUN_COLUMNS if c != 'report')} "
            f"FROM {quote(schema)}.tiersync_reconcile_run WHERE pipeline = %s ORDER BY id DESC LIMIT %s")


# ---------------------------------------------------------------- change-log compaction (see engine.compaction)

def log_size_sql(schema: str) -> str:
    return f"SELECT count(*), coalesce(sum(pg_column_size(l.*)), 0) FROM {quote(schema)}.tiersync_change_log l"


def repeated_keys_sql(schema: str) -> str:
    """Keys with several changes older than a number of seconds (one group per table and key)."""
    return (f"SELECT l.tbl || ' ' || l.pk::text FROM {quote(schema)}.tiersync_change_log l "
            f"WHERE l.tbl = ANY(%(tables)s) AND l.captured_at < now() - %(age)s * interval '1 second' "
            f"GROUP BY l.tbl, l.pk::text HAVING count(*) > 1")


def log_rows_of_keys_sql(schema: str) -> str:
    return (f"SELECT l.id, l.tbl, l.pk::text, l.op, l.before::text, l.origin "
            f"FROM {quote(schema)}.tiersync_change_log l WHERE l.tbl || ' ' || l.pk::text = ANY(%(groups)s) "
            f"AND l.captured_at < now() - %(age)s * interval '1 second' ORDER BY l.id")


def log_remove_sql(schema: str) -> str:
    return f"DELETE FROM {quote(schema)}.tiersync_change_log WHERE id = ANY(%s)"


def log_rewrite_sql(schema: str) -> str:
    return f"UPDATE {quote(schema)}.tiersync_change_log SET op = %s, before = %s::json WHERE id = %s"

def exchange_sql(schema: str):
    """The exchange database's tables and statements (see engine.exchange.ExchangeSql)."""
    from engine.exchange import ExchangeSql

    s = quote(schema)
    return ExchangeSql(
        ddl=tuple(state_ddl(schema)) + (
            f"""CREATE TABLE IF NOT EXISTS {s}.tiersync_outbox (
    link text NOT NULL, seq bigint NOT NULL, batch_id text NOT NULL, payload bytea NOT NULL,
    events integer NOT NULL, created_at text NOT NULL, acked_at text, PRIMARY KEY (link, seq))""",
            f"CREATE TABLE IF NOT EXISTS {s}.tiersync_link_seq (link text PRIMARY KEY, last_seq bigint NOT NULL)",
            f"""CREATE TABLE IF NOT EXISTS {s}.tiersync_inbox (
    sender text NOT NULL, seq bigint NOT NULL, batch_id text NOT NULL, payload bytea NOT NULL,
    events integer NOT NULL, received_at text NOT NULL, PRIMARY KEY (sender, seq))""",
            f"""CREATE TABLE IF NOT EXISTS {s}.tiersync_inbox_consumer (
    consumer text NOT NULL, sender text NOT NULL, last_seq bigint NOT NULL, PRIMARY KEY (consumer, sender))""",
            f"""CREATE TABLE IF NOT EXISTS {s}.tiersync_trace (
    batch_id text NOT NULL, node text NOT NULL, status text NOT NULL, at text NOT NULL, detail text NOT NULL,
    PRIMARY KEY (batch_id, node, status, detail))""",
            f"""CREATE TABLE IF NOT EXISTS {s}.tiersync_trace_key (
    batch_id text NOT NULL, tbl text NOT NULL, key_text text NOT NULL, PRIMARY KEY (tbl, key_text, batch_id))""",
            f"CREATE INDEX IF NOT EXISTS tiersync_trace_at ON {s}.tiersync_trace (at)",
            f"CREATE INDEX IF NOT EXISTS tiersync_trace_key_batch ON {s}.tiersync_trace_key (batch_id)",
        ),
        begin="BEGIN", commit="COMMIT", rollback="ROLLBACK",
        seq_init=f"INSERT INTO {s}.tiersync_link_seq (link, last_seq) VALUES (%s, 0) ON CONFLICT (link) DO NOTHING",
        seq_next=f"UPDATE {s}.tiersync_link_seq SET last_seq = last_seq + 1 WHERE link = %s RETURNING last_seq",
        outbox_insert=(f"INSERT INTO {s}.tiersync_outbox (link, seq, batch_id, payload, events, created_at) "
                       f"VALUES (%s, %s, %s, %s, %s, %s)"),
        outbox_pending=(f"SELECT seq, batch_id, payload, events FROM {s}.tiersync_outbox "
                        f"WHERE link = %s AND acked_at IS NULL ORDER BY seq LIMIT %s"),
        outbox_after=(f"SELECT seq, batch_id, payload, events FROM {s}.tiersync_outbox "
                      f"WHERE link = %s AND seq > %s ORDER BY seq LIMIT %s"),
        outbox_ack=f"UPDATE {s}.tiersync_outbox SET acked_at = %s WHERE link = %s AND seq = %s",
        outbox_recent=(f"SELECT batch_id FROM {s}.tiersync_outbox WHERE link = %s AND acked_at IS NOT NULL "
                       f"ORDER BY seq DESC LIMIT %s"),
        outbox_purge=f"DELETE FROM {s}.tiersync_outbox WHERE link = %s AND seq <= %s AND acked_at IS NOT NULL",
        inbox_insert=(f"INSERT INTO {s}.tiersync_inbox (sender, seq, batch_id, payload, events, received_at) "
                      f"VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (sender, seq) DO NOTHING"),
        inbox_senders=f"SELECT DISTINCT sender FROM {s}.tiersync_inbox",
        inbox_last=f"SELECT max(seq) FROM {s}.tiersync_inbox WHERE sender = %s",
        inbox_read=(f"SELECT seq, batch_id, payload FROM {s}.tiersync_inbox WHERE sender = %s AND seq > %s "
                    f"ORDER BY seq LIMIT %s"),
        consumer_save=(f"INSERT INTO {s}.tiersync_inbox_consumer (consumer, sender, last_seq) VALUES (%s, %s, %s) "
                       f"ON CONFLICT (consumer, sender) DO UPDATE SET last_seq = EXCLUDED.last_seq"),
        consumer_positions=f"SELECT consumer, last_seq FROM {s}.tiersync_inbox_consumer WHERE sender = %s",
        inbox_purge=f"DELETE FROM {s}.tiersync_inbox WHERE sender = %s AND seq <= %s",
        trace_insert=(f"INSERT INTO {s}.tiersync_trace (batch_id, node, status, at, detail) "
                      f"VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"),
        trace_for=(f"SELECT batch_id, node, status, at, detail FROM {s}.tiersync_trace "
                   f"WHERE batch_id IN (SELECT jsonb_array_elements_text(%s::jsonb))"),
        key_insert=(f"INSERT INTO {s}.tiersync_trace_key (batch_id, tbl, key_text) VALUES (%s, %s, %s) "
                    f"ON CONFLICT DO NOTHING"),
        key_batches=f"SELECT batch_id FROM {s}.tiersync_trace_key WHERE tbl = %s AND key_text = %s",
        checkpoint_save=save_checkpoint_sql(schema),
        checkpoint_load=load_checkpoint_sql(schema),
        outbox_backlog=(f"SELECT link, count(*), coalesce(sum(events), 0), min(created_at) FROM {s}.tiersync_outbox "
                        f"WHERE acked_at IS NULL GROUP BY link ORDER BY link"),
        inbox_backlog=(f"SELECT count(*), coalesce(sum(events), 0), min(received_at) FROM {s}.tiersync_inbox "
                       f"WHERE sender = %s AND seq > %s"),
        outbox_prune=f"DELETE FROM {s}.tiersync_outbox WHERE acked_at IS NOT NULL AND acked_at < %s",
        trace_prune=(f"DELETE FROM {s}.tiersync_trace WHERE at < %s "
                     f"AND batch_id NOT IN (SELECT batch_id FROM {s}.tiersync_outbox WHERE acked_at IS NULL) "
                     f"AND batch_id NOT IN (SELECT batch_id FROM {s}.tiersync_inbox)"),
        link_sequences=f"SELECT link, last_seq FROM {s}.tiersync_link_seq",
        inbox_drop_from=f"DELETE FROM {s}.tiersync_inbox WHERE sender = %s AND seq >= %s",
        outbox_unack_from=f"UPDATE {s}.tiersync_outbox SET acked_at = NULL WHERE link = %s AND seq >= %s",
        trace_key_prune=(f"DELETE FROM {s}.tiersync_trace_key k WHERE NOT EXISTS "
                         f"(SELECT 1 FROM {s}.tiersync_trace t WHERE t.batch_id = k.batch_id)"),
    )
