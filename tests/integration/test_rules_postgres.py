"""Rules end to end through real PostgreSQL databases: split, merge, filter moves, value maps, masking, reload."""

from __future__ import annotations

import hashlib
import hmac
import signal
from decimal import Decimal

import pytest
import yaml

from engine.functions import surrogate_key
from tests.helpers import cli, pg_exec, pg_rows, run_once, spawn_engine, wait_until, write_node

pytestmark = pytest.mark.postgres

MASK_KEY = "test-mask-key"

SOURCE_DDL = [
    """CREATE TABLE public.enterprise (
        id integer PRIMARY KEY, name text, region_code text, capital text, status text, industry text,
        phone text, id_card text, legal_person text)""",
    "CREATE TABLE public.branch (id integer PRIMARY KEY, name text, region_code text)",
]
TARGET_DDL = [
    "CREATE SCHEMA exchange",
    """CREATE TABLE exchange.qy_jbxx (
        qyid integer PRIMARY KEY, qymc text, zczb numeric(16,2), zt text, hydm text, sfzh text, fr text,
        sjqh char(6), sjly text)""",
    "CREATE TABLE exchange.qy_lxfs (qyid integer PRIMARY KEY, lxdh text)",
    "CREATE TABLE exchange.qy_all (id integer, ly text, mc text, uid text UNIQUE, PRIMARY KEY (id, ly))",
    "CREATE TABLE public.ref_industry (local_code text PRIMARY KEY, national_code text)",
    "INSERT INTO public.ref_industry VALUES ('A01', '0110'), ('A02', '0120')",
]


def enterprise_pipeline(**overrides):
    pipeline = {
        "name": "up",
        "source": {"database": "county_biz", "tables": ["public.enterprise", "public.branch"]},
        "target": {"database": "city_biz"},
        "mask_key": MASK_KEY,
        "value_maps": {
            "status": {"csv": "status.csv", "key": "local", "value": "national", "unmapped": "reject"},
            "industry": {"database": "city_biz", "table": "public.ref_industry", "key": "local_code",
                         "value": "national_code", "unmapped": "default", "default": "9999"},
        },
        "mappings": [
            {"source": "public.enterprise", "target": "exchange.qy_jbxx", "include_unlisted": False,
             "filter": 'after.status != "3"',
             "columns": {"id": "qyid", "name": {"to": "qymc", "normalize": True},
                         "capital": {"to": "zczb", "cast": "decimal", "units": {"万元": 10000, "元": 1}},
                         "status": {"to": "zt", "map": "status"},
                         "industry": {"to": "hydm", "map": "industry"},
                         "id_card": {"to": "sfzh", "mask": "id_card"},
                         "legal_person": {"to": "fr", "mask": "hash"}},
             "computed": {"sjqh": "region_parent(after.region_code)"},
             "constants": {"sjly": "v1"}},
            {"source": "public.enterprise", "target": "exchange.qy_lxfs", "include_unlisted": False,
             "columns": {"id": "qyid", "phone": {"to": "lxdh", "mask": "phone"}}},
            {"source": "public.branch", "target": "exchange.qy_all", "include_unlisted": False,
             "columns": {"id": "id", "name": "mc"}, "discriminator": {"column": "ly"},
             "surrogate_key": {"column": "uid"}, "key": ["id", "ly"]},
        ],
    }
    pipeline.update(overrides)
    return pipeline


@pytest.fixture
def node(tmp_path, pg_databases):
    county, city = pg_databases
    pg_exec(county, *SOURCE_DDL)
    pg_exec(city, *TARGET_DDL)
    (tmp_path / "status.csv").write_text("local,national\n1,存续\n2,吊销\n3,注销\n", encoding="utf-8")
    config = write_node(tmp_path / "node.yaml", {"county_biz": county, "city_biz": city}, [enterprise_pipeline()])
    cli("triggers", "install", "--config", str(config), "--pipeline", "up")
    return config, county, city


def jbxx(city):
    return pg_rows(city, "SELECT qyid, qymc, zczb, zt, hydm, sfzh, fr, sjqh, sjly FROM exchange.qy_jbxx ORDER BY 1")


def keyed(text):
    return hmac.new(MASK_KEY.encode(), text.encode(), hashlib.sha256).hexdigest()


def test_split_filter_value_maps_and_masks(node):
    config, county, city = node
    pg_exec(county, """INSERT INTO enterprise VALUES
        (1, 'Ａｃｍｅ  Co', '110101', '12.5万元', '1', 'A01', '13812345678', '11010119900307123X', '张三'),
        (2, 'Beta', '110102', '300元', '2', 'Z99', '13900001111', '110102198001011234', '张三'),
        (3, 'Gone', '110105', '1万元', '3', 'A02', '13700002222', '110105197001011111', '李四'),
        (4, 'Odd', '110101', '1万元', 'X', 'A01', null, null, null)""")
    run_once(config)
    assert jbxx(city) == [
        (1, "Acme Co", Decimal("125000.00"), "存续", "0110", "110101********123X", keyed("张三"), "110100", "v1"),
        (2, "Beta", Decimal("300.00"), "吊销", "9999", "110102********1234", keyed("张三"), "110100", "v1"),
    ]  # 3 is filtered out (status 3), 4 has an unmapped status code: dead letter
    # the split's second target gets every row (no filter there), with the phone masked; a row refused by one
    # part of a split is refused whole (one dead letter, replayed as one event)
    assert pg_rows(city, "SELECT qyid, lxdh FROM exchange.qy_lxfs ORDER BY 1") == [
        (1, "138****5678"), (2, "139****1111"), (3, "137****2222")]
    letters = pg_rows(city, "SELECT source_table, error FROM tiersync.tiersync_dead_letter")
    assert letters == [("public.enterprise", "mapping failed: value 'X' of column 'status' is not in value map "
                                             "'status'")]

    # moving out of the filter deletes at the target, moving in inserts
    pg_exec(county, "UPDATE enterprise SET status = '3' WHERE id = 2",
            "UPDATE enterprise SET status = '1', name = 'Back' WHERE id = 3")
    run_once(config)
    assert [(r[0], r[1], r[3]) for r in jbxx(city)] == [(1, "Acme Co", "存续"), (3, "Back", "存续")]
    assert pg_rows(city, "SELECT count(*) FROM exchange.qy_lxfs") == [(3,)]
    pg_exec(county, "DELETE FROM enterprise WHERE id IN (1, 2)")  # 2 is out of the filter: nothing to delete there
    run_once(config)
    assert [r[0] for r in jbxx(city)] == [3]
    assert pg_rows(city, "SELECT qyid FROM exchange.qy_lxfs ORDER BY 1") == [(3,)]


def test_merge_with_discriminator_and_surrogate_key(node, tmp_path):
    config, county, city = node
    pg_exec(county, "INSERT INTO branch VALUES (1, '分支一', '110101'), (2, '分支二', '110101')")
    run_once(config)
    # a second source merged into the same target: a node file with a mapping of enterprise into qy_all too
    doc = yaml.safe_load(config.read_text(encoding="utf-8"))
    doc["pipelines"][0]["mappings"].append(
        {"source": "public.enterprise", "target": "exchange.qy_all", "include_unlisted": False,
         "columns": {"id": "id", "name": "mc"}, "discriminator": {"column": "ly"},
         "surrogate_key": {"column": "uid"}, "key": ["id", "ly"]})
    config.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    pg_exec(county, "INSERT INTO enterprise (id, name, region_code, status) VALUES (1, '企业一', '110101', '1')")
    run_once(config)
    assert pg_rows(city, "SELECT error FROM tiersync.tiersync_dead_letter") == []
    rows = pg_rows(city, "SELECT id, ly, mc, uid FROM exchange.qy_all ORDER BY ly, id")
    assert [r[:3] for r in rows] == [(1, "branch", "分支一"), (2, "branch", "分支二"), (1, "enterprise", "企业一")]
    # the surrogate key: origin node + discriminator + source key, so the two sources' id 1 differ
    assert rows[0][3] == surrogate_key("county-110101", "branch", 1) and len({r[3] for r in rows}) == 3
    pg_exec(county, "DELETE FROM branch WHERE id = 1")
    run_once(config)
    assert pg_rows(city, "SELECT id, ly FROM exchange.qy_all ORDER BY ly, id") == [(2, "branch"), (1, "enterprise")]


def test_rules_cli_against_live_schemas(node, tmp_path):
    config, county, city = node
    cli("rules", "validate", "--config", str(config))
    pg_exec(county, "INSERT INTO enterprise VALUES (7, 'Seven', '110101', '2万元', '1', 'A02', '13811112222', "
                    "'110101200001011234', '王五')")
    before = pg_rows(city, "SELECT count(*) FROM exchange.qy_jbxx")
    out = cli("rules", "test", "--config", str(config), "--mapping", "public.enterprise", "--sample", "5").output
    assert '"zczb": 20000' in out and "138****2222" in out and "INSERT INTO" in out and "ON CONFLICT" in out
    assert pg_rows(city, "SELECT count(*) FROM exchange.qy_jbxx") == before  # nothing was written
    out = cli("rules", "test", "--config", str(config), "--mapping", "qy_jbxx", "--op", "u",
              "--before", '{"id": 7, "status": "1"}', "--row", '{"id": 7, "status": "3", "name": "x"}').output
    assert "delete exchange.qy_jbxx key=[7]" in out and "DELETE FROM" in out

    doc = yaml.safe_load(config.read_text(encoding="utf-8"))
    mapping = doc["pipelines"][0]["mappings"][0]
    mapping["computed"]["sjqh"] = "region_parent(after.regoin_code)"
    mapping["columns"]["nmae"] = "qymc2"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    out = cli("rules", "validate", "--config", str(bad), expect=2).output
    assert "did you mean 'region_code'" in out and "did you mean 'name'" in out
    line = next(x for x in out.splitlines() if "regoin_code" in x)
    file, number, column = line.strip().split(":")[:3]
    text = bad.read_text(encoding="utf-8").splitlines()[int(number) - 1]
    assert text[int(column) - 1:].startswith("regoin_code")  # file:line:column points at the misspelt name
    explained = cli("rules", "explain", "--config", str(config), "--mapping", "qy_jbxx").output
    assert "value map status (csv status.csv; unmapped: reject → dead letters)" in explained
    assert "only rows where after.status != \"3\"" in explained


def test_reload_on_sighup_at_a_batch_boundary(node, tmp_path):
    config, county, city = node
    log = tmp_path / "engine.log"
    engine = spawn_engine(config, log=log)
    try:
        pg_exec(county, "INSERT INTO enterprise (id, name, status) VALUES (1, 'one', '1')")
        wait_until(lambda: pg_rows(city, "SELECT sjly FROM exchange.qy_jbxx WHERE qyid = 1") == [("v1",)], log, 90)
        doc = yaml.safe_load(config.read_text(encoding="utf-8"))
        doc["pipelines"][0]["mappings"][0]["constants"]["sjly"] = "v2"
        config.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
        engine.send_signal(signal.SIGHUP)
        wait_until(lambda: "rules reloaded" in log.read_text(), log, 90)
        pg_exec(county, "INSERT INTO enterprise (id, name, status) VALUES (2, 'two', '1')")
        wait_until(lambda: pg_rows(city, "SELECT count(*) FROM exchange.qy_jbxx") == [(2,)], log, 90)
    finally:
        engine.send_signal(signal.SIGTERM)
        engine.wait(timeout=60)
    assert pg_rows(city, "SELECT qyid, sjly FROM exchange.qy_jbxx ORDER BY 1") == [(1, "v1"), (2, "v2")]
    text = log.read_text()
    assert "public.enterprise: mapping rules changed; existing target rows were written with the old rules and " \
           "need a re-load" in text


def test_conflict_newer_wins_keeps_a_target_row_changed_later(tmp_path, pg_databases):
    county, city = pg_databases
    pg_exec(county, "CREATE TABLE public.item (id integer PRIMARY KEY, v text)")
    pg_exec(city, "CREATE TABLE public.item (id integer PRIMARY KEY, v text, tbsj timestamptz)")
    config = write_node(tmp_path / "node.yaml", {"s": county, "t": city}, [{
        "name": "p", "source": {"database": "s", "tables": ["public.item"]}, "target": {"database": "t"},
        "mappings": [{"source": "public.item", "conflict": "newer_wins", "metadata": {"captured_at": "tbsj"}}]}])
    cli("triggers", "install", "--config", str(config), "--pipeline", "p")
    pg_exec(county, "INSERT INTO item VALUES (1, 'a'), (2, 'b')")
    run_once(config)
    # someone changes row 1 at the target after the source's next change will have been captured
    pg_exec(city, "UPDATE item SET v = 'theirs', tbsj = now() + interval '1 hour' WHERE id = 1")
    pg_exec(county, "UPDATE item SET v = 'ours' WHERE id IN (1, 2)")
    run_once(config)
    assert pg_rows(city, "SELECT id, v FROM item ORDER BY id") == [(1, "theirs"), (2, "ours")]
    pg_exec(city, "UPDATE item SET tbsj = now() - interval '1 hour' WHERE id = 1")  # now theirs is older
    pg_exec(county, "UPDATE item SET v = 'ours again' WHERE id = 1")
    run_once(config)
    assert pg_rows(city, "SELECT id, v FROM item ORDER BY id") == [(1, "ours again"), (2, "ours")]
    out = cli("rules", "test", "--config", str(config), "--mapping", "public.item", "--sample", "1").output
    assert 'SELECT "id", "tbsj" FROM "public"."item" WHERE ("id") IN ((%s)) FOR UPDATE' in out


def test_conflict_newer_wins_needs_a_commit_time_column(tmp_path):
    path = write_node(tmp_path / "node.yaml", {"s": "sqlite:///s.db", "t": "sqlite:///t.db"}, [{
        "name": "p", "source": {"database": "s", "tables": ["item"]}, "target": {"database": "t"},
        "mappings": [{"source": "item", "conflict": "newer_wins"}]}])
    out = cli("rules", "validate", "--offline", "--config", str(path), expect=2).output
    assert "conflict: newer_wins needs metadata: {captured_at: COLUMN}" in out
    path.write_text(path.read_text().replace("newer_wins", "higher_tier_wins"))
    out = cli("rules", "validate", "--offline", "--config", str(path), expect=2).output
    assert "conflict: higher_tier_wins needs metadata: {tier: COLUMN}" in out
