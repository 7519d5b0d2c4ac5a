"""Each rule kind of a mapping, through CompiledMapping (no database)."""

from datetime import date
from decimal import Decimal

import pytest

from engine.config import MappingConfig, PipelineConfig
from engine.errors import TerminalError, TransientError
from engine.event import ChangeEvent, Op, TableId
from engine.expressions import ExpressionError
from engine.functions import surrogate_key
from engine.mapping import CompiledMapping, SplitMapping
from engine.rules import RuleResources, Unmapped
from engine.schema import ColumnInfo, TableInfo

COLUMNS = ("id", "name", "region_code", "capital", "reg_date", "status", "industry", "phone", "id_card", "secret")
SRC = TableInfo(TableId("public", "enterprise"), tuple(ColumnInfo(n, "text") for n in COLUMNS), ("id",))
TGT = TableId("exchange", "qy_jbxx")


def row(i=1, **values):
    base = {"id": i, "name": " Acme ", "region_code": "110101", "capital": "12.5万元", "reg_date": "2020年01月02日",
            "status": "1", "industry": "A01", "phone": "13812345678", "id_card": "11010119900307123X",
            "secret": "s"}
    base.update(values)
    return base


def event(op, before=None, after=None, origin="county-110101"):
    image = after if after is not None else before
    return ChangeEvent(Op(op), SRC.id, (image["id"],), before, after, 0, origin=origin)


def pipeline(**extra):
    return PipelineConfig(name="p", source={"database": "a", "tables": ["public.enterprise"]},
                          target={"database": "b"}, **extra)


def compiled(pipe=None, mode="mirror", target=TGT, **rules):
    pipe = pipe or pipeline()
    config = MappingConfig(source="public.enterprise", **rules)
    return CompiledMapping(config, SRC, ("id",), target, mode, resources=RuleResources(pipe, "."))


def test_column_rules_in_order():
    m = compiled(columns={
        "name": {"to": "qymc", "trim": True, "case": "upper"},
        "capital": {"to": "zczb", "cast": "decimal", "units": {"万元": 10000, "元": 1}},
        "reg_date": {"to": "clrq", "cast": "date", "format": "%Y年%m月%d日"},
        "status": {"to": "zt", "map": {"1": "存续", "2": "注销"}},
        "industry": {"to": "hy", "default": "Z99"},
        "secret": {"mask": "nullify"},
    }, drop=["phone", "id_card"], constants={"sjly": "county"})
    [change] = m.map(event("c", after=row(industry=None)))
    assert change.row == {"id": 1, "qymc": "ACME", "region_code": "110101", "zczb": Decimal("125000"),
                          "clrq": date(2020, 1, 2), "zt": "存续", "hy": "Z99", "secret": None, "sjly": "county"}


def test_bad_value_in_a_cast_with_units_raises_for_the_dead_letter_path():
    m = compiled(columns={"capital": {"cast": "decimal", "units": {"万元": 10000}}})
    with pytest.raises(ValueError, match="unknown unit '美元'"):
        m.map(event("c", after=row(capital="3美元")))


def test_value_map_policies():
    maps = {"keep": {"values": {"1": "A"}}, "null": {"values": {"1": "A"}, "unmapped": "null"},
            "dflt": {"values": {"1": "A"}, "unmapped": "default", "default": "?"},
            "strict": {"values": {"1": "A"}, "unmapped": "reject"}}
    pipe = pipeline(value_maps=maps)
    for name, expected in (("keep", "9"), ("null", None), ("dflt", "?")):
        m = compiled(pipe, columns={"status": {"map": name}})
        assert m.map(event("c", after=row(status="9")))[0].row["status"] == expected
        assert m.map(event("c", after=row(status="1")))[0].row["status"] == "A"
        assert m.map(event("c", after=row(status=1)))[0].row["status"] == "A"  # integer source, text code
    m = compiled(pipe, columns={"status": {"map": "strict"}})
    with pytest.raises(Unmapped, match="value '9' of column 'status' is not in value map 'strict'"):
        m.map(event("c", after=row(status="9")))


def test_value_map_from_csv(tmp_path):
    (tmp_path / "industry.csv").write_text("local,national\nA01,0110\nA02,0120\n", encoding="utf-8")
    pipe = pipeline(value_maps={"industry": {"csv": "industry.csv", "key": "local", "value": "national",
                                             "unmapped": "reject"}})
    config = MappingConfig(source="public.enterprise", columns={"industry": {"to": "hydm", "map": "industry"}})
    m = CompiledMapping(config, SRC, ("id",), TGT, "mirror", resources=RuleResources(pipe, tmp_path))
    assert m.map(event("c", after=row()))[0].row["hydm"] == "0110"
    (tmp_path / "bad.csv").write_text("code,x\n", encoding="utf-8")
    bad = pipeline(value_maps={"m": {"csv": "bad.csv", "key": "local", "value": "national"}})
    with pytest.raises(TerminalError, match="no column local, national"):
        RuleResources(bad, tmp_path)


def test_value_map_from_a_table_reloads_at_a_batch_boundary(monkeypatch):
    tables = {"ref.codes": [{"code": "1", "name": "one"}]}
    pipe = pipeline(value_maps={"codes": {"database": "a", "table": "ref.codes", "key": "code", "value": "name",
                                          "reload": 5}})
    resources = RuleResources(pipe, ".", load_table=lambda db, t: tables[t])
    config = MappingConfig(source="public.enterprise", columns={"status": {"map": "codes"}})
    m = CompiledMapping(config, SRC, ("id",), TGT, "mirror", resources=resources)
    assert m.map(event("c", after=row()))[0].row["status"] == "one"
    tables["ref.codes"] = [{"code": "1", "name": "uno"}]
    resources.refresh()  # too early: the cached map stays
    assert m.map(event("c", after=row()))[0].row["status"] == "one"
    resources.value_maps["codes"].loaded_at -= 10
    resources.refresh()
    assert m.map(event("c", after=row()))[0].row["status"] == "uno"
    del tables["ref.codes"]  # the database goes away: the cached map stays in use

    def unreachable(db, table):
        raise TransientError("connection refused")
    resources.value_maps["codes"].loader = lambda: unreachable("a", "ref.codes")
    resources.value_maps["codes"].loaded_at -= 10
    resources.refresh()
    assert m.map(event("c", after=row()))[0].row["status"] == "uno"


def test_masks():
    pipe = pipeline(mask_key="k1")
    m = compiled(pipe, columns={"phone": {"mask": "phone"}, "id_card": {"mask": "id_card"},
                                "name": {"mask": "hash"}})
    out = m.map(event("c", after=row()))[0].row
    assert out["phone"] == "138****5678" and out["id_card"] == "110101********123X"
    again = m.map(event("c", after=row(2)))[0].row
    assert out["name"] == again["name"] and len(out["name"]) == 64 and "Acme" not in out["name"]  # joins still work
    other_key = compiled(pipeline(mask_key="k2"), columns={"name": {"mask": "hash"}})
    assert other_key.map(event("c", after=row()))[0].row["name"] != out["name"]
    with pytest.raises(TerminalError, match="columns.name: mask: hash needs the pipeline.s mask_key"):
        compiled(columns={"name": {"mask": "hash"}})


def test_computed_columns_concatenation_and_splitting():
    m = compiled(computed={"sjqh": "region_parent(after.region_code)",
                           "ms": 'concat(trim(after.name), "@", after.region_code)',
                           "first": 'split_part(after.industry, "0", 0)',
                           "cz": 'op'})
    out = m.map(event("c", after=row()))[0].row
    assert (out["sjqh"], out["ms"], out["first"], out["cz"]) == ("110100", "Acme@110101", "A", "c")
    with pytest.raises(ExpressionError, match="did you mean 'region_code'"):
        compiled(computed={"x": "after.region"})


def test_filter_moves_rows_in_and_out():
    m = compiled(filter='after.status == "1"')
    assert m.map(event("c", after=row(status="2"))) == []
    [up] = m.map(event("c", after=row(status="1")))
    assert up.kind == "upsert"
    [gone] = m.map(event("u", before=row(status="1"), after=row(status="2")))
    assert gone.kind == "delete" and gone.key == (1,)
    [came] = m.map(event("u", before=row(status="2"), after=row(status="1")))
    assert came.kind == "upsert"
    assert m.map(event("u", before=row(status="2"), after=row(status="3"))) == []
    assert m.map(event("d", before=row(status="2"))) == []
    assert m.map(event("d", before=row(status="1")))[0].kind == "delete"
    [unknown] = m.map(event("u", before=None, after=row(status="2")))  # no old image: delete to be sure
    assert unknown.kind == "delete"
    with pytest.raises(ExpressionError, match="not true or false"):
        compiled(filter="after.status").map(event("c", after=row()))


def test_split_one_source_into_two_targets():
    a = compiled(target=TableId("x", "base"), columns={"id": "qyid", "name": "qymc"}, include_unlisted=False)
    b = compiled(target=TableId("x", "contact"), columns={"id": "qyid", "phone": "lxdh"}, include_unlisted=False,
                 filter="after.phone != null")
    split = SplitMapping([a, b])
    changes = split.map(event("c", after=row()))
    assert [(c.table.name, c.row) for c in changes] == [("base", {"qyid": 1, "qymc": " Acme "}),
                                                        ("contact", {"qyid": 1, "lxdh": "13812345678"})]
    assert [c.table.name for c in split.map(event("c", after=row(phone=None)))] == ["base"]


def test_merge_discriminator_extends_the_key():
    m = compiled(discriminator={"column": "ly"})
    [change] = m.map(event("c", after=row()))
    assert m.target_key == ("id", "ly") and change.key == (1, "enterprise") and change.row["ly"] == "enterprise"
    named = compiled(discriminator={"column": "ly", "value": "county-a"})
    assert named.map(event("c", after=row()))[0].key == (1, "county-a")


def test_surrogate_key_is_deterministic_per_origin_and_source_key():
    m = compiled(surrogate_key={"column": "uid"})
    one = m.map(event("c", after=row(), origin="county-a"))[0]
    assert m.target_key == ("uid",) and one.key == (surrogate_key("county-a", 1),)
    assert m.map(event("u", before=row(), after=row(name="x"), origin="county-a"))[0].key == one.key
    assert m.map(event("c", after=row(), origin="county-b"))[0].key != one.key
    [delete] = m.map(event("d", before=row(), origin="county-a"))
    assert delete.kind == "delete" and delete.key == one.key


def test_lookup_enriches_by_key():
    reference = [{"code": "110101", "name": "东城区"}]
    pipe = pipeline()
    resources = RuleResources(pipe, ".", load_table=lambda db, t: reference)
    config = MappingConfig(source="public.enterprise", lookups=[{
        "database": "a", "table": "ref.region", "match": {"code": "region_code"}, "columns": {"name": "xzqh_mc"}}])
    m = CompiledMapping(config, SRC, ("id",), TGT, "mirror", resources=resources)
    assert m.map(event("c", after=row()))[0].row["xzqh_mc"] == "东城区"
    assert m.map(event("c", after=row(region_code="999999")))[0].row["xzqh_mc"] is None
    strict = MappingConfig(source="public.enterprise", lookups=[{
        "database": "a", "table": "ref.region", "match": {"code": "region_code"}, "columns": {"name": "mc"},
        "missing": "reject"}])
    m = CompiledMapping(strict, SRC, ("id",), TGT, "mirror", resources=resources)
    with pytest.raises(Unmapped, match="no row in lookup table ref.region"):
        m.map(event("c", after=row(region_code="999999")))
    assert "mc" in m.target_columns()


def test_key_change_with_computed_key_deletes_the_old_target_row():
    m = compiled(computed={"k": 'concat(after.region_code, "-", after.id)'}, key=["k"])
    changes = m.map(event("u", before=row(region_code="110101"), after=row(region_code="110102")))
    assert [(c.kind, c.key) for c in changes] == [("delete", ("110101-1",)), ("upsert", ("110102-1",))]


NODE = """\
node: {id: county-110101, tier: county, region: "110101"}
databases:
  a: {url: "sqlite:///a.db"}
  b: {url: "sqlite:///b.db"}
pipelines:
  - name: p
    source: {database: a, tables: [public.enterprise]}
    target: {database: b}
    value_maps:
      status: {values: {"1": A}}
    mappings:
      - source: public.enterprise
        columns:
          status: {map: statuz}
          phone: {mask: hash}
        filter: 'after.status == "1" &&'
        computed:
          x: "nosuch(after.id)"
        lookups:
          - {database: c, table: t, match: {a: id}, columns: {b: c}}
"""


def test_config_reports_every_rule_problem_with_file_line_column(tmp_path):
    from engine.config import load_config
    from engine.errors import ConfigError

    path = tmp_path / "node.yaml"
    path.write_text(NODE, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    problems = "\n".join(caught.value.problems)
    assert f"{path}:14:25: columns.status: no value map named 'statuz' (did you mean 'status'?)" in problems
    assert f"{path}:15:25: columns.phone: mask: hash needs mask_key on the pipeline" in problems
    assert f"{path}:16:38: filter: not a valid expression at line 1, column 21" in problems
    assert f"{path}:18:15: computed.x: unknown function nosuch()" in problems  # the column of "nosuch"
    assert "lookup database 'c' is not declared under databases" in problems
    assert len(caught.value.problems) == 5


def test_reload_report_says_which_tables_need_a_reload():
    from engine.pipeline import reload_report

    old = pipeline(mappings=[{"source": "public.enterprise", "columns": {"id": "a"}}])
    same = pipeline(mappings=[{"source": "public.enterprise", "columns": {"id": "a"}}])
    assert reload_report(old, same) == []
    renamed = pipeline(mappings=[{"source": "public.enterprise", "columns": {"id": "b"}}])
    [line] = reload_report(old, renamed)
    assert line.startswith("public.enterprise: mapping rules changed") and "tiersync snapshot --pipeline p" in line
    filtered = pipeline(mappings=[{"source": "public.enterprise", "columns": {"id": "a"}, "filter": "true"}])
    assert "the row filter changed" in reload_report(old, filtered)[0]
    remapped = pipeline(mappings=[{"source": "public.enterprise", "columns": {"id": "a"}}],
                        value_maps={"m": {"values": {"1": "x"}}})
    assert "value maps or mask key changed" in reload_report(old, remapped)[0]


def test_expression_problems_are_reported_along_with_shape_errors(tmp_path):
    from engine.config import load_config
    from engine.errors import ConfigError

    path = tmp_path / "node.yaml"
    path.write_text(NODE.replace("{map: statuz}", "{map: statuz, cast: nosuchcast}"), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    problems = "\n".join(caught.value.problems)
    assert "unknown cast 'nosuchcast'" in problems  # a shape error ...
    assert f"{path}:18:15: computed.x: unknown function nosuch()" in problems  # ... and the expressions, at once
    assert f"{path}:16:38: filter: not a valid expression" in problems
