"""Conflict policies end to end, on PostgreSQL, MariaDB and SQLite targets: a target row changed by someone else
is kept or rejected per the mapping's policy, and the rest of the batch applies."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Callable

import pytest

from tests.helpers import cli, pg_exec, pg_rows, run_once, write_node
from tests.mysql_helpers import my_exec, my_rows

FUTURE, PAST = "2999-01-01 00:00:00", "2000-01-01 00:00:00"


@dataclass
class Side:
    url: str
    run: Callable  # (url, *statements)
    rows: Callable  # (url, sql) → list of tuples

    def __call__(self, *statements: str) -> None:
        self.run(self.url, *statements)

    def select(self, sql: str) -> list[tuple]:
        return [tuple(r) for r in self.rows(self.url, sql)]


def _sqlite_exec(url: str, *statements: str) -> None:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        for statement in statements:
            conn.execute(statement)


def _sqlite_rows(url: str, sql: str) -> list[tuple]:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        return conn.execute(sql).fetchall()


DDL = {
    "postgres": ("CREATE TABLE item (id integer PRIMARY KEY, name text, qty numeric(10,2))",
                 "CREATE TABLE item (id integer PRIMARY KEY, name text, qty numeric(10,2), tier text, ts timestamptz)"),
    "mariadb": ("CREATE TABLE item (id int PRIMARY KEY, name varchar(40), qty decimal(10,2))",
                "CREATE TABLE item (id int PRIMARY KEY, name varchar(40), qty decimal(10,2), tier varchar(20), "
                "ts datetime(6))"),
    "sqlite": ("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT, qty NUMERIC(10,2))",
               "CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT, qty NUMERIC(10,2), tier TEXT, ts TEXT)"),
}


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres),
                        pytest.param("mariadb", marks=pytest.mark.mariadb), "sqlite"])
def sides(request, tmp_path) -> tuple[Side, Side]:
    kind = request.param
    if kind == "postgres":
        source, target = request.getfixturevalue("pg_databases")
        pair = Side(source, pg_exec, pg_rows), Side(target, pg_exec, pg_rows)
    elif kind == "mariadb":
        source, target = request.getfixturevalue("maria_databases")
        pair = Side(source, my_exec, my_rows), Side(target, my_exec, my_rows)
    else:
        pair = (Side(f"sqlite:///{tmp_path / 's.db'}", _sqlite_exec, _sqlite_rows),
                Side(f"sqlite:///{tmp_path / 't.db'}", _sqlite_exec, _sqlite_rows))
    pair[0](DDL[kind][0])
    pair[1](DDL[kind][1])
    return pair


def node(tmp_path, sides, mapping: dict, target: dict | None = None):
    source, target_side = sides
    config = write_node(tmp_path / "node.yaml", {"s": source.url, "t": target_side.url}, [{
        "name": "p", "source": {"database": "s", "tables": ["item"]},
        "target": {"database": "t", **(target or {})},
        "mappings": [{"source": "item", "include_unlisted": False,
                      "columns": {"id": "id", "name": "name", "qty": "qty"}, **mapping}]}])
    cli("triggers", "install", "--config", str(config), "--pipeline", "p")
    return config


def dead_letters(config) -> str:
    return cli("dead-letters", "--config", str(config), "--pipeline", "p").output


def test_reject_sends_rows_changed_at_the_target_to_dead_letters_and_applies_the_rest(tmp_path, sides):
    source, target = sides
    config = node(tmp_path, sides, {"conflict": "reject"})
    source("INSERT INTO item VALUES (1, 'a', 1.50), (2, 'a', 2.50), (3, 'a', 3.00), (4, 'a', 4.25), (7, 'a', 7.75)")
    run_once(config)
    assert target.select("SELECT count(*) FROM item") == [(5,)]
    # someone else works on the target: changes row 2, deletes row 3, inserts row 5
    target("UPDATE item SET name = 'theirs' WHERE id = 2", "DELETE FROM item WHERE id = 3",
           "INSERT INTO item (id, name, qty) VALUES (5, 'theirs', 5.00)")
    source("UPDATE item SET name = 'ours', qty = qty + 1 WHERE id IN (1, 2, 3)", "DELETE FROM item WHERE id = 4",
           "INSERT INTO item VALUES (5, 'ours', 5.00), (6, 'ours', 6.00)", "DELETE FROM item WHERE id = 7")
    run_once(config)
    assert target.select("SELECT id, name FROM item ORDER BY id") == [(1, "ours"), (2, "theirs"), (5, "theirs"),
                                                                      (6, "ours")]
    letters = dead_letters(config)
    assert letters.count("conflict: reject") == 3, letters
    assert "key=[2]: conflict: reject: the target row changed since the source's before-image: name (target " \
           "'theirs', expected 'a')" in letters
    assert "key=[3]: conflict: reject: the target row no longer exists" in letters
    assert "key=[5]: conflict: reject: a row with this key already exists with different values" in letters
    # the same batch again (as after a crash before the source was acknowledged) changes nothing
    run_once(config)
    assert dead_letters(config).count("conflict: reject") == 3


def test_higher_tier_wins_keeps_rows_last_written_from_a_higher_tier(tmp_path, sides):
    source, target = sides
    # this node is a county; the target database belongs to a city node: its own writes count as city
    config = node(tmp_path, sides, {"conflict": "higher_tier_wins", "metadata": {"tier": "tier"}},
                  {"tier": "city"})
    source("INSERT INTO item VALUES (1, 'a', 1), (2, 'a', 2), (3, 'a', 3), (4, 'a', 4)")
    run_once(config)
    assert target.select("SELECT id, tier FROM item ORDER BY id") == [(i, "county") for i in range(1, 5)]
    target("UPDATE item SET name = 'national', tier = 'national' WHERE id = 1",  # as the national node wrote it
           "UPDATE item SET name = 'city', tier = NULL WHERE id = 3",  # the city's own application
           "UPDATE item SET name = 'province', tier = 'province' WHERE id = 4")
    source("UPDATE item SET name = 'county' WHERE id IN (1, 2, 3)", "DELETE FROM item WHERE id = 4",
           "INSERT INTO item VALUES (5, 'county', 5)")
    run_once(config)
    assert target.select("SELECT id, name, tier FROM item ORDER BY id") == [
        (1, "national", "national"), (2, "county", "county"), (3, "city", None), (4, "province", "province"),
        (5, "county", "county")]
    letters = dead_letters(config)
    assert letters.count("conflict: higher_tier_wins") == 3, letters
    assert "key=[1]: conflict: higher_tier_wins: the target row was last written from tier national" in letters
    assert "key=[3]: conflict: higher_tier_wins: the target row was last written locally at this node" in letters


def test_newer_wins_keeps_a_target_row_changed_later(tmp_path, sides):
    source, target = sides
    config = node(tmp_path, sides, {"conflict": "newer_wins", "metadata": {"captured_at": "ts"}})
    source("INSERT INTO item VALUES (1, 'a', 1), (2, 'a', 2), (3, 'a', 3)")
    run_once(config)
    target(f"UPDATE item SET name = 'theirs', ts = '{FUTURE}' WHERE id IN (1, 3)",
           f"UPDATE item SET name = 'theirs', ts = '{PAST}' WHERE id = 2")
    source("UPDATE item SET name = 'ours' WHERE id IN (1, 2)", "DELETE FROM item WHERE id = 3")
    run_once(config)
    assert target.select("SELECT id, name FROM item ORDER BY id") == [(1, "theirs"), (2, "ours"), (3, "theirs")]
    assert "no dead letters" in dead_letters(config)


def test_policies_need_their_metadata_column_reported_at_the_line(tmp_path):
    config = write_node(tmp_path / "node.yaml", {"s": "sqlite:///s.db", "t": "sqlite:///t.db"}, [{
        "name": "p", "source": {"database": "s", "tables": ["item"]}, "target": {"database": "t"},
        "mappings": [{"source": "item", "conflict": "higher_tier_wins"}]}])
    out = cli("rules", "validate", "--offline", "--config", str(config), expect=2).output
    line = next(i for i, text in enumerate(config.read_text().splitlines(), 1) if "conflict:" in text)
    assert f"node.yaml:{line}:" in out and "conflict: higher_tier_wins needs metadata: {tier: COLUMN}" in out
    config.write_text(config.read_text().replace("higher_tier_wins", "first_wins"))
    out = cli("rules", "validate", "--offline", "--config", str(config), expect=2).output
    assert "'source_wins', 'newer_wins', 'higher_tier_wins' or 'reject'" in out


def test_higher_tier_wins_across_the_exchange_the_origin_tier_travels_with_the_batch(tmp_path):
    from tests.exchange_nodes import capture_out, inbox_in, node_file, q, sqlite_db

    county_biz = sqlite_db(tmp_path / "county.db", "CREATE TABLE enterprise (id INTEGER PRIMARY KEY, name TEXT)")
    city_biz = sqlite_db(tmp_path / "city.db", "CREATE TABLE qy (qyid INTEGER PRIMARY KEY, qymc TEXT, sjcj TEXT)")
    county_x, city_x = f"sqlite:///{tmp_path}/county-x.db", f"sqlite:///{tmp_path}/city-x.db"
    route = {"key": ["qyid"], "up": True}
    county = node_file(tmp_path / "county.yaml", {"id": "county-110101", "tier": "county", "region": "110101",
                                                  "parent": "city-110100"}, {"biz": county_biz, "x": county_x},
                       {"database": "x", "links": {"city-110100": {"role": "parent", "transport": "exchange-db",
                                                                   "inbox": city_x}}, "tables": {"qy": route}},
                       [capture_out("biz", "x", "enterprise", "qy", {"id": "qyid", "name": "qymc"})])
    inbox = inbox_in("x", "biz", "qy", "qy")
    inbox["mappings"][0].update(conflict="higher_tier_wins", metadata={"tier": "sjcj"})
    city = node_file(tmp_path / "city.yaml", {"id": "city-110100", "tier": "city", "region": "110100"},
                     {"biz": city_biz, "x": city_x},
                     {"database": "x", "links": {"county-110101": {"role": "child", "region": "110101",
                                                                   "transport": "exchange-db", "inbox": county_x}},
                      "tables": {"qy": route}}, [inbox])
    cli("triggers", "install", "--config", str(county), "--pipeline", "enterprise-out")
    _sqlite_exec(county_biz, "INSERT INTO enterprise VALUES (1, 'a'), (2, 'a'), (3, 'a')")
    run_once(county)
    run_once(city)
    assert q(tmp_path / "city.db", "SELECT qyid, sjcj FROM qy ORDER BY 1") == [(1, "county"), (2, "county"),
                                                                               (3, "county")]
    _sqlite_exec(city_biz, "UPDATE qy SET qymc = 'province', sjcj = 'province' WHERE qyid = 2",
                 "UPDATE qy SET qymc = 'city', sjcj = NULL WHERE qyid = 3")  # the city's own application
    _sqlite_exec(county_biz, "UPDATE enterprise SET name = 'county'")
    run_once(county)
    run_once(city)
    assert q(tmp_path / "city.db", "SELECT qyid, qymc, sjcj FROM qy ORDER BY 1") == [
        (1, "county", "county"), (2, "province", "province"), (3, "city", None)]
    letters = cli("dead-letters", "--config", str(city), "--pipeline", "qy-in").output
    assert "origin county-110101 (tier county)" in letters and letters.count("conflict: higher_tier_wins") == 2


READING_DDL = {
    "postgres": "CREATE TABLE reading (sensor integer, at timestamp, val numeric(10,2), raw bytea, note text, "
                "PRIMARY KEY (sensor, at))",
    "mariadb": "CREATE TABLE reading (sensor int, at datetime(6), val decimal(10,2), raw varbinary(20), "
               "note varchar(20), PRIMARY KEY (sensor, at))",
    "sqlite": "CREATE TABLE reading (sensor INTEGER, at TEXT, val NUMERIC(10,2), raw BLOB, note TEXT, "
              "PRIMARY KEY (sensor, at))",
}
HEX = {"postgres": "'\\x6162'::bytea", "mariadb": "X'6162'", "sqlite": "X'6162'"}


@pytest.mark.parametrize("policy", ["reject", "newer_wins"])
def test_keys_and_values_of_every_kind_match_the_target_rows_they_name(tmp_path, sides, request, policy):
    """A timestamp in the key, a decimal and bytes among the compared columns: each change finds its target row
    however the target's driver returns those values, so an untouched row is no conflict and a newer one stays."""
    source, target = sides
    kind = request.node.callspec.params["sides"]
    source(READING_DDL[kind])
    target(READING_DDL[kind].replace("note ", "ts " + {"postgres": "timestamptz", "mariadb": "datetime(6)",
                                                       "sqlite": "TEXT"}[kind] + ", note "))
    mapping = {"source": "reading", "include_unlisted": False, "conflict": policy,
               "columns": {c: c for c in ("sensor", "at", "val", "raw", "note")}}
    if policy == "newer_wins":
        mapping["metadata"] = {"captured_at": "ts"}
    config = write_node(tmp_path / "node.yaml", {"s": source.url, "t": target.url}, [{
        "name": "p", "source": {"database": "s", "tables": ["reading"]}, "target": {"database": "t"},
        "mappings": [mapping]}])
    cli("triggers", "install", "--config", str(config), "--pipeline", "p")
    source(*[f"INSERT INTO reading VALUES ({i}, '2024-03-01 08:30:00', {i}.50, {HEX[kind]}, 'a')" for i in (1, 2, 3)])
    run_once(config)
    assert target.select("SELECT count(*) FROM reading") == [(3,)]
    if policy == "newer_wins":
        target(f"UPDATE reading SET note = 'theirs', ts = '{FUTURE}' WHERE sensor = 3")
    source("UPDATE reading SET note = 'ours'", "DELETE FROM reading WHERE sensor = 2")
    run_once(config)
    assert target.select("SELECT sensor, note FROM reading ORDER BY sensor") == [
        (1, "ours"), (3, "theirs" if policy == "newer_wins" else "ours")]
    assert "no dead letters" in dead_letters(config)


WAITING = {  # how many transactions of the target database wait for a lock
    "postgres": "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'",
    # a row lock wait, or the applier's locking read still running (it cannot finish while the row is held)
    "mariadb": "SELECT (SELECT count(*) FROM information_schema.innodb_trx WHERE trx_state = 'LOCK WAIT') + "
               "(SELECT count(*) FROM information_schema.processlist WHERE info LIKE '%FOR UPDATE%' "
               "AND id <> connection_id())",
}


@pytest.mark.parametrize("kind", [pytest.param("postgres", marks=pytest.mark.postgres),
                                  pytest.param("mariadb", marks=pytest.mark.mariadb)])
@pytest.mark.parametrize("policy", ["newer_wins", "reject"])
def test_a_row_inserted_at_the_target_while_the_batch_applies_is_not_overwritten(tmp_path, request, kind, policy):
    """The target row a change presumes absent is inserted by someone else's transaction that commits while the
    batch applies: the policy must still see it (a read of the touched rows cannot lock a row that does not exist
    yet on PostgreSQL, so the applier locks the table's other writers out first)."""
    import threading

    urls = request.getfixturevalue("pg_databases" if kind == "postgres" else "maria_databases")
    run, rows = (pg_exec, pg_rows) if kind == "postgres" else (my_exec, my_rows)
    source, target = Side(urls[0], run, rows), Side(urls[1], run, rows)
    source(DDL[kind][0])
    target(DDL[kind][1])
    config = node(tmp_path, (source, target), {"conflict": policy, "metadata": {"captured_at": "ts"}})
    source("INSERT INTO item VALUES (1, 'a', 1)")
    run_once(config)
    theirs = _connection(kind, target.url)
    try:
        theirs.cursor().execute(f"INSERT INTO item (id, name, qty, ts) VALUES (9, 'theirs', 9, '{FUTURE}')")
        source("INSERT INTO item VALUES (9, 'ours', 9)")
        failures = []
        applying = threading.Thread(target=lambda: failures.append(_run_once_failure(config)))
        applying.start()
        deadline = time.monotonic() + 60
        while not target.select(WAITING[kind])[0][0]:  # the apply waits for the other writer's transaction
            assert time.monotonic() < deadline and applying.is_alive(), "the apply never waited for the other writer"
            time.sleep(0.05)
        theirs.commit()
    finally:
        theirs.close()
    applying.join(60)
    assert failures == [None]
    assert target.select("SELECT id, name FROM item ORDER BY id") == [(1, "a"), (9, "theirs")]
    if policy == "reject":
        assert "key=[9]: conflict: reject: a row with this key already exists" in dead_letters(config)


def _connection(kind: str, url: str):
    """A connection of someone else writing the target, in a transaction left open."""
    if kind == "postgres":
        import psycopg

        return psycopg.connect(url)
    from tests.mysql_helpers import _connect

    conn = _connect(url)
    conn.autocommit(False)
    return conn


def _run_once_failure(config) -> str | None:
    try:
        run_once(config)
    except AssertionError as exc:
        return str(exc)
    return None


@pytest.mark.postgres
def test_higher_tier_wins_reads_a_tier_kept_in_a_fixed_width_column(tmp_path, pg_databases):
    """A tier column of type char(n): PostgreSQL returns the tier padded with blanks ('national  '); it is still
    that tier, and a county change to a row written from the national tier is refused."""
    source, target = Side(pg_databases[0], pg_exec, pg_rows), Side(pg_databases[1], pg_exec, pg_rows)
    source(DDL["postgres"][0])
    target(DDL["postgres"][1].replace("tier text", "tier char(10)"))
    config = node(tmp_path, (source, target), {"conflict": "higher_tier_wins", "metadata": {"tier": "tier"}},
                  {"tier": "city"})
    source("INSERT INTO item VALUES (1, 'a', 1), (2, 'a', 2)")
    run_once(config)
    target("UPDATE item SET name = 'national', tier = 'national' WHERE id = 1")
    source("UPDATE item SET name = 'county'")
    run_once(config)
    assert target.select("SELECT id, name, rtrim(tier) FROM item ORDER BY id") == [(1, "national", "national"),
                                                                                   (2, "county", "county")]
    assert "key=[1]: conflict: higher_tier_wins: the target row was last written from tier national" in \
        dead_letters(config)


@pytest.mark.postgres
@pytest.mark.parametrize("policy", ["reject", "newer_wins"])
def test_keys_in_fixed_width_columns_find_their_target_rows(tmp_path, pg_databases, policy):
    """A char(n) target key (a varchar at the source) shorter than n: PostgreSQL returns it padded with blanks
    ('a1    '); each change must still find its target row (an untouched row is no conflict; a newer row stays)."""
    source, target = Side(pg_databases[0], pg_exec, pg_rows), Side(pg_databases[1], pg_exec, pg_rows)
    source(DDL["postgres"][0].replace("id integer", "id varchar(6)"))  # the source's key is not padded
    target(DDL["postgres"][1].replace("id integer", "id char(6)"))
    config = node(tmp_path, (source, target), {"conflict": policy, "metadata": {"captured_at": "ts"}})
    source("INSERT INTO item VALUES ('a1', 'a', 1), ('a2', 'a', 2)")
    run_once(config)
    target(f"UPDATE item SET name = 'theirs', ts = '{FUTURE}' WHERE id = 'a2'" if policy == "newer_wins" else
           "SELECT 1")
    source("UPDATE item SET name = 'ours' WHERE id = 'a1'",
           "UPDATE item SET name = 'ours' WHERE id = 'a2'" if policy == "newer_wins" else "SELECT 1")
    run_once(config)
    assert target.select("SELECT rtrim(id), name FROM item ORDER BY id") == [
        ("a1", "ours"), ("a2", "theirs" if policy == "newer_wins" else "a")]
    assert "no dead letters" in dead_letters(config)
