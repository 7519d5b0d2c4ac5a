"""Log-based capture from PostgreSQL (pgoutput) into PostgreSQL, exactly once, with the slot kept honest."""

from __future__ import annotations

import random
import threading
import time

import psycopg
import pytest

from tests.helpers import cli, pg_exec, pg_rows, run_once, spawn_engine, write_node

pytestmark = pytest.mark.postgres

DDL = ("CREATE TABLE item (id integer PRIMARY KEY, label text NOT NULL, qty integer NOT NULL, "
       "amount numeric(12,2), at timestamptz, doc text)")
SAME = "SELECT id, label, qty, amount, at, doc FROM item ORDER BY id"


def node(tmp_path, source_url, target_url, **pipeline_extra):
    pipeline = {"name": "wal", "source": {"database": "src", "capture": "logical", "tables": ["item"]},
                "target": {"database": "dst"}, "batch_size": 400, "poll_interval": 0.05} | pipeline_extra
    return write_node(tmp_path / "node.yaml", {"src": source_url, "dst": target_url}, [pipeline])


@pytest.fixture
def logical(tmp_path, pg_logical_databases):
    source, target = pg_logical_databases
    pg_exec(source, DDL)
    pg_exec(target, DDL)
    config = node(tmp_path, source, target)
    return config, source, target


def slot_row(source):
    return pg_rows(source, "SELECT active, confirmed_flush_lsn FROM pg_replication_slots "
                           "WHERE database = current_database()")


def test_slot_commands_and_startup_checks(logical, tmp_path):
    config, source, target = logical
    output = cli("check", "--config", str(config), expect=2).output
    assert "replication slot tiersync_lsrc_" in output and "does not exist" in output
    assert "tiersync slot create" in output
    sql = cli("slot", "sql", "--config", str(config), "--pipeline", "wal").output
    assert 'CREATE PUBLICATION "tiersync_wal" FOR TABLE "public"."item"' in sql
    assert slot_row(source) == []  # sql changed nothing
    cli("slot", "create", "--config", str(config), "--pipeline", "wal")
    cli("check", "--config", str(config))
    status = cli("slot", "status", "--config", str(config), "--pipeline", "wal").output
    assert "inactive" in status and "WAL held" in status
    pg_exec(source, "CREATE TABLE nokey (a int, b text)")
    pg_exec(target, "CREATE TABLE nokey (a int, b text, PRIMARY KEY (a))")
    other = write_node(tmp_path / "other.yaml", {"src": source, "dst": target}, [{
        "name": "wal", "source": {"database": "src", "capture": "logical", "tables": ["item", "nokey"]},
        "target": {"database": "dst"}, "mappings": [{"source": "nokey", "source_key": ["a"]}]}])
    output = cli("check", "--config", str(other), expect=2).output
    assert "public.nokey is not in publication tiersync_wal" in output
    assert 'ALTER TABLE "public"."nokey" REPLICA IDENTITY FULL' in output
    cli("slot", "drop", "--config", str(config), "--pipeline", "wal")
    assert slot_row(source) == []


def test_stream_applies_inserts_updates_deletes_truncate_and_toast(logical, tmp_path):
    config, source, target = logical
    cli("slot", "create", "--config", str(config), "--pipeline", "wal")
    big = "长文本" * 200_000  # TOASTed
    pg_exec(source,
            "INSERT INTO item SELECT g, 'l' || g, g, g * 1.5, '2026-11-21 08:00+08', NULL "
            "FROM generate_series(1, 300) g",
            f"UPDATE item SET doc = '{big}' WHERE id = 7",
            "UPDATE item SET qty = -7 WHERE id = 7",  # the TOASTed doc is sent as 'unchanged'
            "DELETE FROM item WHERE id % 10 = 0",
            "UPDATE item SET id = 1000 WHERE id = 1")
    run_once(config)
    assert pg_rows(target, SAME) == pg_rows(source, SAME)
    assert pg_rows(target, "SELECT length(doc), qty FROM item WHERE id = 7") == [(600_000, -7)]
    # truncate: ignored by default, applied when the target says so
    pg_exec(source, "TRUNCATE item")
    run_once(config)
    assert pg_rows(target, "SELECT count(*) FROM item")[0][0] > 0
    config = node(tmp_path, source, target, target={"database": "dst", "truncate": "apply"})
    pg_exec(source, "INSERT INTO item VALUES (1, 'a', 1, 1, now(), NULL)", "TRUNCATE item",
            "INSERT INTO item VALUES (2, 'b', 2, 2, now(), NULL)")
    run_once(config)
    assert pg_rows(target, SAME) == pg_rows(source, SAME)


def test_replica_identity_default_and_full(logical):
    config, source, target = logical
    pg_exec(source, "ALTER TABLE item REPLICA IDENTITY FULL")
    cli("slot", "create", "--config", str(config), "--pipeline", "wal")
    pg_exec(source, "INSERT INTO item SELECT g, 'x', g, NULL, NULL, NULL FROM generate_series(1, 50) g",
            "UPDATE item SET label = 'y' WHERE id < 10", "DELETE FROM item WHERE id > 40")
    run_once(config)
    assert pg_rows(target, SAME) == pg_rows(source, SAME)
    pg_exec(source, "ALTER TABLE item REPLICA IDENTITY DEFAULT",
            "UPDATE item SET label = 'z' WHERE id < 5", "DELETE FROM item WHERE id > 30",
            "UPDATE item SET id = id + 100 WHERE id = 20")
    run_once(config)
    assert pg_rows(target, SAME) == pg_rows(source, SAME)


def test_large_transaction_stays_atomic_and_memory_bounded(logical, tmp_path):
    config, source, target = logical
    cli("slot", "create", "--config", str(config), "--pipeline", "wal")
    pg_exec(source, "INSERT INTO item SELECT g, 'big', g, NULL, NULL, NULL FROM generate_series(1, 60000) g")
    engine = spawn_engine(config, "--once", log=tmp_path / "engine.log")
    seen = set()
    while engine.poll() is None:  # the target never shows part of the transaction
        seen.add(pg_rows(target, "SELECT count(*) FROM item")[0][0])
        time.sleep(0.05)
    assert engine.returncode == 0, (tmp_path / "engine.log").read_text()
    assert seen <= {0, 60000}
    assert pg_rows(target, SAME) == pg_rows(source, SAME)


def test_kill_9_during_streaming_and_source_restart(logical, pg_logical_server, tmp_path):
    config, source, target = logical
    cli("slot", "create", "--config", str(config), "--pipeline", "wal")
    stop = threading.Event()
    chance = random.Random(11)

    def write():
        while not stop.is_set():
            try:
                with psycopg.connect(source) as conn:
                    while not stop.is_set():
                        key = chance.randint(1, 200)
                        conn.execute("INSERT INTO item VALUES (%s, 'w', 1, 1.25, now(), NULL) ON CONFLICT (id) "
                                     "DO UPDATE SET qty = item.qty + 1", (key,))
                        if key % 5 == 0:
                            conn.execute("DELETE FROM item WHERE id = %s", (key + 1,))
                        conn.commit()
            except psycopg.OperationalError:
                time.sleep(0.2)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for round_ in range(6):
            engine = spawn_engine(config, log=tmp_path / "engine.log")
            time.sleep(chance.uniform(0.8, 1.6))
            if round_ == 2:
                pg_logical_server.restart()  # the source goes away under a running stream
                time.sleep(1.0)
            engine.kill()
            engine.wait()
    finally:
        stop.set()
        writer.join()
    run_once(config)
    assert pg_rows(target, SAME) == pg_rows(source, SAME)


def test_idle_slot_keeps_advancing(logical, tmp_path):
    config, source, target = logical
    cli("slot", "create", "--config", str(config), "--pipeline", "wal")
    pg_exec(source, "CREATE TABLE unrelated (a int)")
    engine = spawn_engine(config, log=tmp_path / "engine.log")
    try:
        time.sleep(2)
        before = pg_rows(source, "SELECT confirmed_flush_lsn FROM pg_replication_slots "
                                   "WHERE database = current_database()")[0][0]
        pg_exec(source, "INSERT INTO unrelated SELECT generate_series(1, 20000)")  # WAL, but nothing published
        deadline = time.time() + 30
        while time.time() < deadline:
            after = pg_rows(source, "SELECT confirmed_flush_lsn FROM pg_replication_slots "
                                   "WHERE database = current_database()")[0][0]
            if after is not None and str(after) != str(before):
                break
            time.sleep(0.5)
        assert str(after) != str(before), "the slot did not move while the source was idle"
    finally:
        engine.terminate()
        engine.wait(30)


def test_initial_load_then_stream_with_kill_9_during_the_load(logical, tmp_path):
    """Rows that predate the slot arrive by the full load; changes after the slot by the stream; crashes resume."""
    _, source, target = logical
    pg_exec(source, "INSERT INTO item SELECT g, 'old', g, g, NULL, NULL FROM generate_series(1, 30000) g")
    config = node(tmp_path, source, target, initial_load=True, batch_size=150)
    cli("slot", "create", "--config", str(config), "--pipeline", "wal")  # the slot first, then the copy
    pg_exec(source, "UPDATE item SET label = 'changed after the slot' WHERE id % 100 = 0",
            "DELETE FROM item WHERE id % 333 = 0")
    engine = spawn_engine(config, log=tmp_path / "engine.log")
    deadline = time.time() + 60
    while time.time() < deadline:  # let the load get part of the way, then kill it
        if pg_rows(target, "SELECT to_regclass('tiersync.tiersync_snapshot')")[0][0] and \
                pg_rows(target, "SELECT coalesce(sum(rows), 0) FROM tiersync.tiersync_snapshot")[0][0] > 3000:
            break
        time.sleep(0.01)
    engine.kill()
    engine.wait()
    [(rows, done)] = pg_rows(target, "SELECT rows, done FROM tiersync.tiersync_snapshot")
    assert 0 < rows and not done
    pg_exec(source, "INSERT INTO item VALUES (40000, 'during the load', 1, 1, NULL, NULL)")
    run_once(config)
    assert pg_rows(target, SAME) == pg_rows(source, SAME)


def test_relayed_changes_carry_a_replication_origin_and_do_not_echo(tmp_path, pg_logical_server):
    """county ⇄ city, both captured from the WAL: what the city applied comes back tagged, and is not sent back."""
    county = pg_logical_server.create_database(f"county_echo_{time.time_ns()}")
    city = pg_logical_server.create_database(f"city_echo_{time.time_ns()}")
    for url in (county, city):
        pg_exec(url, DDL)
    up = write_node(tmp_path / "county.yaml", {"county": county, "city": city}, [{
        "name": "up", "source": {"database": "county", "capture": "logical", "tables": ["item"]},
        "target": {"database": "city", "node": "city-110100"}}], node_id="county-110101")
    down = write_node(tmp_path / "city.yaml", {"city": city, "county": county}, [{
        "name": "down", "source": {"database": "city", "capture": "logical", "tables": ["item"]},
        "target": {"database": "county", "node": "county-110101"}}], node_id="city-110100")
    cli("slot", "create", "--config", str(up), "--pipeline", "up")
    cli("slot", "create", "--config", str(down), "--pipeline", "down")
    pg_exec(county, "INSERT INTO item VALUES (1, 'county', 1, NULL, NULL, NULL)")
    pg_exec(city, "INSERT INTO item VALUES (2, 'city', 2, NULL, NULL, NULL)")
    version = "SELECT xmin::text FROM item WHERE id = %s"  # changes whenever the row is written again
    county_row, city_row = pg_rows(county, version, (1,)), pg_rows(city, version, (2,))
    for _ in range(3):
        run_once(up)
        run_once(down)
    assert pg_rows(county, SAME) == pg_rows(city, SAME)
    assert [r[0] for r in pg_rows(county, SAME)] == [1, 2]
    origins = {r[0] for r in pg_rows(city, "SELECT roname FROM pg_replication_origin")}
    assert "tiersync:up" in origins and not any(o.startswith("tiersync:up:") for o in origins)  # one per pipeline
    # nothing came back to where it started: each side's own row was never written again
    assert pg_rows(county, version, (1,)) == county_row
    assert pg_rows(city, version, (2,)) == city_row


ODD_COLUMNS = ("id bigint PRIMARY KEY, {t} text, v varchar(20), c char(3), n numeric, f float8, r real, b boolean, "
               "d date, ts timestamp, tz timestamptz, tm time, iv interval, by bytea, j jsonb, js json, u uuid, "
               "a int[], ta text[], m mood, ip inet, doc text")
HOSTILE = ["tab\there", "new\nline", "cr\rhere", "back\\slash", "\\N", "\\.", "", "中文 é", "\\t literally",
           "end\\", "'quote\"", "\t\n\r\\"]


def read_one_batch(config):
    """The events of one batch as the running pipeline reads them (nothing applied or acknowledged)."""
    from engine.config import load_config
    from engine.pipeline import PipelineRunner

    runner = PipelineRunner(load_config(config), "wal")
    runner.open()
    try:
        return runner.reader.read(10_000).events
    finally:
        runner.close()


def test_rows_travel_as_copy_lines_exactly_with_hostile_values_renames_and_toast(tmp_path, pg_logical_databases):
    """PG → PG with rename-only rules and the same column types: rows are never decoded, and arrive exactly;
    a table whose target types differ takes the decoding path and arrives too."""
    from engine.encoded import EncodedRow

    source, target = pg_logical_databases
    for url, label in ((source, "t"), (target, "label")):
        pg_exec(url, "CREATE TYPE mood AS ENUM ('ok', 'sad', 'tab\tmood')",
                f"CREATE TABLE odd ({ODD_COLUMNS.format(t=label)})",
                "CREATE TABLE retyped (id integer PRIMARY KEY, v " + ("varchar(20)" if url == source else "text") + ")")
    config = write_node(tmp_path / "node.yaml", {"src": source, "dst": target}, [{
        "name": "wal", "source": {"database": "src", "capture": "logical", "tables": ["odd", "retyped"]},
        "target": {"database": "dst"}, "mappings": [{"source": "odd", "columns": {"t": "label"}}],
        "batch_size": 50, "poll_interval": 0.05}])
    cli("slot", "create", "--config", str(config), "--pipeline", "wal")
    with psycopg.connect(source) as conn:
        for i, text in enumerate(HOSTILE, 1):
            conn.execute(
                "INSERT INTO odd VALUES (%s, %s, %s, 'ab', %s, %s, 1.5e-7, %s, '2024-02-29', '2024-01-01 23:59:59.5', "
                "'2024-06-01 12:00+08', '24:00', '1 mon 2 days 03:04:05', %s, %s, %s, gen_random_uuid(), "
                "ARRAY[1, NULL, 3], ARRAY[%s, NULL, 'x,y', '\"q\"'], %s, '10.0.0.1/8', NULL)",
                (i, text, text[:20], f"{i}.10", 0.1 * i, i % 2 == 0, text.encode(), f'{{"k": {i}, "s": "{i}"}}',
                 '{"t": "\\t\\n"}', text, ["ok", "sad", "tab\tmood"][i % 3]))
        conn.execute("INSERT INTO odd (id) VALUES (100)")  # NULL in every other column
        conn.execute("INSERT INTO odd (id, n, f, d, tz) VALUES (101, 'NaN', '-Infinity', 'infinity', '-infinity')")
        conn.execute("INSERT INTO retyped SELECT g, 'v' || g FROM generate_series(1, 5) g")
    events = read_one_batch(config)
    assert {type(e.after) for e in events if str(e.table) == "public.odd"} == {EncodedRow}
    assert {type(e.after) for e in events if str(e.table) == "public.retyped"} == {dict}
    # both paths describe the change alike: who captured it, where and when
    meta = {(e.origin, e.origin_tier, type(e.captured_at).__name__, e.source_node, e.source_database, e.txid > 0)
            for e in events}
    assert meta == {("county-110101", "", "datetime", "county-110101", source.rsplit("/", 1)[1], True)}
    big = "长文本" * 100_000  # TOASTed: later updates send it as 'unchanged', which must not become NULL
    pg_exec(source, f"UPDATE odd SET doc = '{big}' WHERE id = 3",
            "UPDATE odd SET t = t || ' again', n = n + 1 WHERE id % 2 = 1",  # id 3: its doc is unchanged TOAST
            "UPDATE odd SET id = id + 1000 WHERE id = 4",  # a key change: the old row goes
            "DELETE FROM odd WHERE id = 5", "UPDATE retyped SET v = 'w' WHERE id = 2")
    run_once(config)
    for table in ("odd", "retyped"):
        query = f"SELECT r::text FROM {table} r ORDER BY id"  # every column as PostgreSQL prints it
        assert pg_rows(target, query) == pg_rows(source, query)
    assert pg_rows(target, "SELECT length(doc), label FROM odd WHERE id = 3") == [(300_000, "cr\rhere again")]


def test_inserted_rows_the_target_already_has_are_upserted_with_their_origin(logical):
    """New rows are COPied straight into the target; when some are there already (a replay, a full load that
    saw them) the plain COPY is refused and rolled back, and the upsert writes them all, still marked."""
    config, source, target = logical
    pg_exec(target, "CREATE TABLE seen (id integer, origin text)",
            "CREATE FUNCTION note_origin() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "INSERT INTO seen VALUES (NEW.id, current_setting('tiersync.origin', true)); RETURN NEW; END $$",
            "CREATE TRIGGER note AFTER INSERT OR UPDATE ON item FOR EACH ROW EXECUTE FUNCTION note_origin()",
            "INSERT INTO item VALUES (150, 'stale', 0, NULL, NULL, NULL)")  # in the middle of the first batch
    cli("slot", "create", "--config", str(config), "--pipeline", "wal")
    pg_exec(source, "INSERT INTO item SELECT g, 'new', g, NULL, NULL, NULL FROM generate_series(1, 1000) g")
    run_once(config)
    assert pg_rows(target, SAME) == pg_rows(source, SAME)
    # every row written once by the apply (the refused COPY left nothing), each marked with the source node
    assert pg_rows(target, "SELECT count(*), count(DISTINCT id), min(origin), max(origin) FROM seen "
                           "WHERE origin <> ''") == [(1000, 1000, "county-110101", "county-110101")]


def test_a_run_that_ends_confirms_what_it_applied(logical):
    """`run --once` tells the slot about its last batch before it leaves: the next start does not decode it again."""
    config, source, target = logical
    cli("slot", "create", "--config", str(config), "--pipeline", "wal")
    # a slow apply: the last read (finding nothing more) is over before the last batch commits
    pg_exec(target, "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(1); "
                    "RETURN NULL; END $$",
            "CREATE TRIGGER slow AFTER INSERT ON item FOR EACH STATEMENT EXECUTE FUNCTION slow()")
    pg_exec(source, "INSERT INTO item SELECT g, 'x', g, NULL, NULL, NULL FROM generate_series(1, 50) g")
    committed = pg_rows(source, "SELECT pg_current_wal_lsn()")[0][0]
    run_once(config)
    assert pg_rows(target, SAME) == pg_rows(source, SAME)
    assert pg_rows(source, "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots "
                           "WHERE database = current_database()", (str(committed),)) == [(True,)]
