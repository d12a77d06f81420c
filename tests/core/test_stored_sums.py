"""Sums stored at load (sqlgate/stored_sums.py): the same engine rows as the per-row
expression on adversarial values, used only while the recorded encoding is the planned one,
kept across restarts (absent for catalogs saved before), and invisible to everyone."""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import replace

import pyarrow as pa
import pytest
from sqlglot import exp

from rewriter import plan_query
from rewriter.planner import fixed_point_sum, sum_encoding
from rewriter.truncation import truncated_read
from sqlgate.backends import add_external_dataset
from sqlgate.catalog import resolve_in
from sqlgate.errors import PolicyRefused, SqlgateError
from sqlgate.gateway import Gateway
from sqlgate.metadata import StoredSum, dataset_to_dict, parse_dataset, stored_sum_column

from tests.core.hidden_columns import (assert_listings_come_from_metadata,
                                      assert_named_like_an_unknown_column)

HALF = 2.0**-17  # an exact half at the last of 16 fraction bits

METADATA = {
    "dataset": "fx", "budget": {"epsilon": 1000, "delta": 1e-5},
    "query": {"epsilon": 1.0, "delta": 1e-7},
    "tables": {
        "t": {"privacy_unit": "uid", "max_rows_per_unit": 3, "max_groups_per_unit": 2,
              "max_rows_per_group": 2,
              "columns": {"uid": "int", "tid": "int",
                          "g": {"type": "string", "public_keys": ["a", "b"]},
                          "x": {"type": "float", "lower": -2.5, "upper": 7.25},
                          "y": {"type": "float", "lower": 0, "upper": 1000.0, "nullable": False},
                          "n": {"type": "int", "lower": -5, "upper": 5},
                          "w": {"type": "int", "lower": 0.5, "upper": 9.5},
                          "big": {"type": "float", "lower": 0, "upper": 1e300},
                          "free": "float", "s": "string"}},
        "c": {"unit_via": {"column": "tid", "table": "t", "references": "tid"},
              "truncate_rows_per_unit": 2,
              "columns": {"tid": "int", "z": {"type": "float", "lower": 0, "upper": 100}}},
        "u": {"privacy_unit": "uid", "truncate_rows_per_unit": 2,
              "columns": {"uid": "int", "g": "string",
                          "x": {"type": "float", "lower": -2.5, "upper": 7.25},
                          "n": {"type": "int", "lower": -5, "upper": 5, "nullable": False}}},
        "p": {"public": True, "columns": {"g": "string",
                                          "v": {"type": "float", "lower": 0, "upper": 1}}},
    },
}

X_VALUES = [None, math.nan, math.inf, -math.inf, -0.0, 0.0, HALF, -HALF, 3 * HALF, -3 * HALF,
            7.25 - HALF, 7.25 + HALF, -2.5 + HALF, -2.5 - HALF, 7.25, -2.5,
            math.nextafter(7.25, 8), math.nextafter(-2.5, -3), 1e300, -1e300, 2.0**62, 1.5,
            0.5 + HALF, 2.0**-40]
Y_VALUES = [math.nan, math.inf, -math.inf, -0.0, 999.5 + 2.0**-7, 1000.0 + 2.0**-15, 1e300,
            -1.0, 500.0, 2.0**-12]
N_VALUES = [None, -2**63, 2**63 - 1, -6, 6, 0, 5, -5, 1]
W_VALUES = [None, 0, 1, 9, 10, -2**63, 2**63 - 1, 5]


def _rows(count: int) -> dict[str, list]:
    """Every adversarial value, spread over units that keep more rows than any bound."""
    def pick(values, i, step=1):
        return values[(i * step) % len(values)]
    uids = [i // 5 for i in range(count)]
    return {"uid": uids, "tid": list(range(count)), "g": [["a", "b", None][i % 3] for i in range(count)],
            "x": [pick(X_VALUES, i) for i in range(count)],
            "y": [pick(Y_VALUES, i, 3) for i in range(count)],
            "n": [pick(N_VALUES, i, 5) for i in range(count)],
            "w": [pick(W_VALUES, i, 7) for i in range(count)],
            "big": [pick(X_VALUES, i, 11) for i in range(count)],
            "free": [1.0] * count, "s": ["s"] * count}


def _frames(count: int = 60) -> dict[str, pa.Table]:
    t = _rows(count)
    types = {"uid": pa.int64(), "tid": pa.int64(), "g": pa.string(), "x": pa.float64(),
             "y": pa.float64(), "n": pa.int64(), "w": pa.int64(), "big": pa.float64(),
             "free": pa.float64(), "s": pa.string()}
    # Y is declared NOT NULL: its values have none. Floats' NaN stays NaN (not NULL) in Arrow.
    c = {"tid": [i % count for i in range(3 * count)],
         "z": [pick for pick in (X_VALUES * 8)[:3 * count]]}
    u = {"uid": t["uid"], "g": t["g"], "x": t["x"], "n": [v if v is not None else 0 for v in t["n"]]}
    return {"t": pa.table({k: pa.array(v, type=types[k]) for k, v in t.items()}),
            "c": pa.table({"tid": pa.array(c["tid"], pa.int64()),
                           "z": pa.array(c["z"], pa.float64())}),
            "u": pa.table({"uid": pa.array(u["uid"], pa.int64()), "g": pa.array(u["g"]),
                           "x": pa.array(u["x"], pa.float64()),
                           "n": pa.array(u["n"], pa.int64())}),
            "p": pa.table({"g": ["a", "b"], "v": [0.5, 0.25]})}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    gw = Gateway(tmp_path_factory.mktemp("fx") / "home")
    gw.add_dataset(parse_dataset(METADATA), _frames())
    yield gw
    gw.close()


def _without_sums(meta):
    return replace(meta, tables={n: replace(t, stored_sums={}) for n, t in meta.tables.items()})


def _plans(gw: Gateway, sql: str):
    stored = gw.dataset("fx")
    bare = _without_sums(stored)
    return (plan_query(sql, lambda node: resolve_in({"fx": stored}, node)),
            plan_query(sql, lambda node: resolve_in({"fx": bare}, node)))


def _summed_from_storage(sql: str, column: str | None = None) -> bool:
    """Whether the bounded SQL sums a stored column (`column`, or any) into a measure."""
    if column is None:
        return any(_summed_from_storage(sql, c) for c in ("x", "y", "n", "w", "z", "v"))
    return re.search(r'\."__fx\$' + column + r'\$[^"]*" AS "v_m', sql) is not None


def _hidden(gw: Gateway, table: str, column: str) -> str:
    """The name of the stored column of `table`.`column` (it spells out its encoding)."""
    return stored_sum_column(column, gw.dataset("fx").tables[table].stored_sums[column])


def _engine_rows(gw: Gateway, sql: str) -> Counter:
    def same(v):
        return "nan" if isinstance(v, float) and math.isnan(v) else v
    return Counter(tuple(same(v) for v in row) for row in gw.executor.run(sql).rows)


# ---------------------------------------------------------------- what is stored


def test_load_stores_bounded_private_columns_with_the_planners_encoding(loaded):
    meta = loaded.dataset("fx")
    t = meta.tables["t"]
    # Bounded numeric columns of private tables; `big` would not fit (refused when planned),
    # unbounded and string columns have no sum; public tables get nothing.
    assert set(t.stored_sums) == {"x", "y", "n", "w"}
    for name, encoding in t.stored_sums.items():
        assert encoding == sum_encoding(t.columns[name])
    assert t.stored_sums["w"].bits > 0 and t.stored_sums["n"].bits == 0
    assert t.stored_sums["y"].nullable is False and t.stored_sums["x"].nullable is True
    assert set(meta.tables["c"].stored_sums) == {"z"}
    assert meta.tables["p"].stored_sums == {}
    columns = loaded.executor.run('SELECT * FROM "fx"."t" LIMIT 0').columns
    assert [c for c in columns if c.startswith("__fx$")] == [
        stored_sum_column(c, t.stored_sums[c]) for c in "xynw"]
    assert _hidden(loaded, "t", "x") == "__fx$x$-2.5$7.25$16$n"


def test_every_stored_value_is_the_planners_expression_of_its_row(loaded):
    meta = loaded.dataset("fx")
    for table in meta.tables.values():
        for name, encoding in table.stored_sums.items():
            value = fixed_point_sum(exp.column(name, quoted=True), encoding).sql(dialect="duckdb")
            differing, rows = loaded.executor.run(
                f'SELECT COUNT(*) FILTER (WHERE "{stored_sum_column(name, encoding)}" IS DISTINCT FROM '
                f'{value}), COUNT(*) FROM "fx"."{table.name}"').rows[0]
            assert differing == 0 and rows > 0, (table.name, name)


def test_ingest_truncation_keeps_its_rows_and_stores_sums_of_those(loaded):
    stored = loaded.executor.run('SELECT COUNT(*), MAX(n) FROM (SELECT uid, COUNT(*) AS n '
                                 'FROM "fx"."u" GROUP BY uid)').rows[0]
    assert stored[1] == 2  # truncate_rows_per_unit: 2 kept per unit
    assert set(loaded.dataset("fx").tables["u"].stored_sums) == {"x", "n"}


# ---------------------------------------------------------------- same engine rows


QUERIES = [
    "SELECT SUM(x), AVG(y), SUM(n), AVG(w), STDDEV(x), VARIANCE(n) FROM t",
    "SELECT g, SUM(x), AVG(n), COUNT(*) FROM t GROUP BY g",
    "SELECT SUM(x) AS sx, SUM(y) FROM t WHERE y > 3 AND n IS NOT NULL",
    "SELECT SUM(c.z), SUM(t.x), AVG(t.w) FROM t JOIN c ON c.tid = t.tid",
    "SELECT p.g, SUM(t.x), AVG(t.y) FROM t LEFT JOIN p ON p.g = t.g GROUP BY p.g",
    "SELECT SUM(t.x), SUM(t2.n) FROM t JOIN t t2 ON t2.uid = t.uid",
    "SELECT SUM(x), SUM(n), AVG(x) FROM u",
    "SELECT g, SUM(x), STDDEV(n) FROM u GROUP BY g",
    "WITH s AS (SELECT uid, x, n FROM u WHERE n > 0) SELECT SUM(x), AVG(n) FROM s",
]


@pytest.mark.parametrize("sql", QUERIES)
def test_stored_sums_give_the_same_engine_rows_as_the_expression(loaded, sql):
    with_sums, without = _plans(loaded, sql)
    assert _summed_from_storage(with_sums.bounded_sql)
    assert "__fx$" not in without.bounded_sql
    assert with_sums.measures == without.measures  # sensitivity and encoding: unchanged
    assert _engine_rows(loaded, with_sums.bounded_sql) == _engine_rows(loaded, without.bounded_sql)


def test_the_answer_is_computed_from_the_stored_column(loaded):
    """Not just planned: the engine really reads the stored column (a wrong value there
    changes the raw sum), so the equality above compares two different computations."""
    plan, _ = _plans(loaded, "SELECT SUM(x) FROM u")
    before = loaded.executor.run(plan.bounded_sql).rows
    conn = loaded.executor.connection.cursor()
    try:
        conn.execute('CREATE TABLE fx.u_copy AS SELECT * FROM fx.u')
        hidden = _hidden(loaded, "u", "x")
        conn.execute(f'UPDATE fx.u_copy SET "{hidden}" = "{hidden}" + 1')
        moved = conn.execute(plan.bounded_sql.replace('"fx"."u"', '"fx"."u_copy"')).fetchall()
    finally:
        conn.execute("DROP TABLE IF EXISTS fx.u_copy")
        conn.close()
    assert moved != before


def test_query_time_truncation_keeps_the_same_rows_and_carries_the_sums(loaded):
    table = loaded.dataset("fx").tables["t"]
    node = exp.Table(this=exp.to_identifier("t", quoted=True), db=exp.to_identifier("fx", quoted=True))
    declared = ", ".join(f'"{c}"' for c in table.columns)
    kept = {}
    for variant in (table, replace(table, stored_sums={})):
        read = truncated_read(variant, node, "r", 3)
        sql = exp.select("*").from_(read).sql(dialect="duckdb")
        kept[bool(variant.stored_sums)] = (loaded.executor.run(sql).columns,
                                           _engine_rows(loaded, f"SELECT {declared} FROM ({sql})"))
    columns, rows = kept[True]
    assert [c for c in columns if c.startswith("__fx$")] == [
        stored_sum_column(c, s) for c, s in table.stored_sums.items()]
    assert rows == kept[False][1] and sum(rows.values()) < 60  # units over 3 rows were cut


def test_a_query_time_truncation_carries_only_the_stored_columns_read(loaded):
    for sql, read in (("SELECT COUNT(*), MEDIAN(x) FROM t", set()),
                      ("SELECT SUM(x), VARIANCE(n) FROM t", {"x", "n"}),
                      ("SELECT g, AVG(w) FROM t GROUP BY g", {"w"})):
        plan, _ = _plans(loaded, sql)
        text = plan.bounded_sql + (plan.quantile_sql or "")
        assert {c for c in "xynw" if f'"__fx${c}$' in text} == read, sql


def test_gateway_answers_use_the_stored_columns(loaded):
    result = loaded.query("SELECT SUM(x), AVG(y) FROM t", analyst="ana")
    assert _summed_from_storage(result.rewritten_sql) and len(result.rows) == 1


# ---------------------------------------------------------------- when not to use them


def test_changed_encoding_falls_back_to_the_expression(loaded):
    meta = loaded.dataset("fx")
    t = meta.tables["t"]
    recorded = t.stored_sums["x"]
    for changed in (replace(recorded, bits=recorded.bits - 1), replace(recorded, upper=8.0),
                    replace(recorded, nullable=False)):
        table = replace(t, stored_sums={**t.stored_sums, "x": changed})
        stale = replace(meta, tables={**meta.tables, "t": table})
        plan = plan_query("SELECT SUM(x), SUM(n) FROM t", lambda node: resolve_in({"fx": stale}, node))
        assert not _summed_from_storage(plan.bounded_sql, "x")
        assert _summed_from_storage(plan.bounded_sql, "n")
    # Bounds changed in the metadata while the stored column was computed with the old ones.
    wider = replace(t.columns["x"], upper=9.0)
    table = replace(t, columns={**t.columns, "x": wider})
    stale = replace(meta, tables={**meta.tables, "t": table})
    plan = plan_query("SELECT SUM(x) FROM t", lambda node: resolve_in({"fx": stale}, node))
    assert not _summed_from_storage(plan.bounded_sql, "x")


def test_outer_side_of_a_left_join_is_never_read_from_storage(loaded):
    meta = loaded.dataset("fx")
    p = meta.tables["p"]
    # Public tables store nothing; even if one recorded a sum, a padded NULL row of a NOT
    # NULL column is `lower` for the expression and NULL in storage.
    forged = replace(p, stored_sums={"v": StoredSum(0.0, 1.0, 16, True)})
    forged_meta = replace(meta, tables={**meta.tables, "p": forged})
    plan = plan_query("SELECT SUM(p.v), SUM(t.x) FROM t LEFT JOIN p ON p.g = t.g",
                      lambda node: resolve_in({"fx": forged_meta}, node))
    assert not _summed_from_storage(plan.bounded_sql, "v")
    assert _summed_from_storage(plan.bounded_sql, "x")


def test_columns_too_wide_are_not_stored_and_still_refused(loaded):
    with pytest.raises(PolicyRefused, match="tighter bounds"):
        loaded.query("SELECT SUM(big) FROM t", analyst="ana")


def test_external_engines_get_no_stored_sums(tmp_path):
    meta = parse_dataset({**METADATA, "dataset": "ext",
                          "tables": {"u": METADATA["tables"]["u"]}})
    with Gateway(tmp_path / "h") as gw:
        added = add_external_dataset(gw, meta)  # rows live elsewhere: stand-ins here
        assert added.tables["u"].stored_sums == {}
        plan = plan_query("SELECT SUM(x) FROM u", lambda node: gw.catalog.resolve_table(node))
        assert "__fx$" not in plan.bounded_sql
        assert "__fx$" not in "".join(gw.executor.run('SELECT * FROM "ext"."u"').columns)


def test_switching_to_another_engine_forgets_the_stored_sums(tmp_path):
    """A gateway whose datasets were stored here, then pointed at an engine that holds the
    same tables without the hidden columns (sqlgate.backends.use_executor), plans on the
    per-row expression from then on (no cached plan reading them is reused)."""
    from sqlgate.backends import use_executor

    class Elsewhere:  # another engine: the same rows, no stored-sum columns
        def __init__(self, inner):
            self.inner, self.seen = inner, []

        def run(self, sql, **kwargs):
            self.seen.append(sql)
            return self.inner.run(sql, **kwargs)

    with Gateway(tmp_path / "h") as gw:
        gw.add_dataset(parse_dataset(METADATA), _frames(20))
        sql = "SELECT SUM(x), AVG(y) FROM t"
        assert _summed_from_storage(gw.explain(sql, analyst="ana").rewritten_sql)
        version = gw.catalog.entry("fx").version
        elsewhere = Elsewhere(gw.executor)
        own = use_executor(gw, elsewhere)
        try:
            assert all(not t.stored_sums for t in gw.dataset("fx").tables.values())
            assert gw.catalog.entry("fx").version != version
            assert gw.query(sql, analyst="ana").rows
            assert elsewhere.seen and not any("__fx$" in s for s in elsewhere.seen)
        finally:
            use_executor(gw, own)
    with Gateway(tmp_path / "h") as gw:  # the saved catalog still holds the facts
        assert gw.dataset("fx").tables["t"].stored_sums


# ---------------------------------------------------------------- saved catalogs


def _reopen(home, edit=None):
    path = home / "catalog" / "fx.json"
    if edit is not None:
        saved = json.loads(path.read_text())
        edit(saved)
        path.write_text(json.dumps(saved))
    return Gateway(home)


def test_stored_sums_survive_a_restart_and_legacy_catalogs_have_none(tmp_path):
    home = tmp_path / "home"
    frames = _frames(20)
    with Gateway(home) as gw:
        gw.add_dataset(parse_dataset(METADATA), frames)
        recorded = {n: dict(t.stored_sums) for n, t in gw.dataset("fx").tables.items()}
        plan, bare = _plans(gw, QUERIES[0])
        expected = _engine_rows(gw, bare.bounded_sql)
    with _reopen(home) as gw:
        assert {n: dict(t.stored_sums) for n, t in gw.dataset("fx").tables.items()} == recorded
        assert _plans(gw, QUERIES[0])[0].bounded_sql == plan.bounded_sql
    # A catalog saved before stored sums existed: the fact is absent, the expression is used.
    with _reopen(home, lambda saved: saved.pop("stored_sums")) as gw:
        assert all(not t.stored_sums for t in gw.dataset("fx").tables.values())
        legacy = plan_query(QUERIES[0], lambda node: gw.catalog.resolve_table(node))
        assert "__fx$" not in legacy.bounded_sql and _summed_from_storage(plan.bounded_sql)
        assert _engine_rows(gw, legacy.bounded_sql) == expected


def test_saved_facts_are_kept_only_where_they_hold(tmp_path):
    home = tmp_path / "home"
    with Gateway(home) as gw:
        gw.add_dataset(parse_dataset(METADATA), _frames(20))
        conn = gw.executor.connection.cursor()
        conn.execute(f'ALTER TABLE fx.t DROP COLUMN "{_hidden(gw, "t", "w")}"')  # gone
        conn.close()

    def tamper(saved):
        sums = saved["stored_sums"]
        sums["t"]["y"]["bits"] = "16"            # malformed
        sums["t"]["s"] = dict(sums["t"]["n"])     # a string column
        sums["t"]["nosuch"] = dict(sums["t"]["n"])
        sums["p"] = {"v": {"lower": 0, "upper": 1, "bits": 16, "nullable": True}}  # public
        sums["c"]["z"]["lower"] = float("nan")    # not a bound
        sums["c"]["z2"] = dict(sums["t"]["x"], upper=10**400)  # past any float
        sums["u"] = "garbage"
    with _reopen(home, tamper) as gw:
        meta = gw.dataset("fx")
        assert set(meta.tables["t"].stored_sums) == {"x", "n"}
        assert not meta.tables["c"].stored_sums and not meta.tables["u"].stored_sums
        assert not meta.tables["p"].stored_sums
        plan = plan_query("SELECT SUM(w), SUM(x) FROM t", lambda node: gw.catalog.resolve_table(node))
        assert not _summed_from_storage(plan.bounded_sql, "w")
        assert _summed_from_storage(plan.bounded_sql, "x")
        assert gw.executor.run(plan.bounded_sql).rows


def test_a_catalog_file_older_than_its_tables_reads_no_stale_sums(tmp_path):
    """A crash between the tables' commit and the catalog file's write leaves the previous
    metadata beside the new tables. The stored column's name spells out its encoding, so a
    recorded encoding the tables were not computed with finds no column: never read."""
    home = tmp_path / "home"
    wider = json.loads(json.dumps(METADATA))
    wider["tables"]["t"]["columns"]["x"]["upper"] = 9.0
    with Gateway(home) as gw:
        gw.add_dataset(parse_dataset(METADATA), _frames(20))
        old_file = (home / "catalog" / "fx.json").read_text()
        gw.add_dataset(parse_dataset(wider), _frames(20), replace=True)
    (home / "catalog" / "fx.json").write_text(old_file)  # as if the crash came right here
    with Gateway(home) as gw:
        t = gw.dataset("fx").tables["t"]
        assert t.columns["x"].upper == 7.25 and "x" not in t.stored_sums
        assert set(t.stored_sums) == {"y", "n", "w"}  # unchanged encodings: same columns
        plan = plan_query("SELECT SUM(x), SUM(n) FROM t", lambda node: gw.catalog.resolve_table(node))
        assert not _summed_from_storage(plan.bounded_sql, "x")
        assert _summed_from_storage(plan.bounded_sql, "n")
        assert gw.executor.run(plan.bounded_sql).rows


# ---------------------------------------------------------------- invisible


def test_exact_sql_sees_the_declared_columns_only(loaded):
    declared = tuple(loaded.dataset("fx").tables["t"].columns)
    assert loaded.run_exact("SELECT * FROM t", "fx").columns == declared
    assert loaded.run_exact("SELECT q.* FROM fx.t AS q WHERE q.uid < 3", "fx").columns == declared
    joined = loaded.run_exact("SELECT * FROM t JOIN c ON c.tid = t.tid LIMIT 1", "fx").columns
    assert not [c for c in joined if "__fx" in c]
    counted = loaded.run_exact("SELECT t.uid, COUNT(*) AS k FROM fx.t GROUP BY t.uid", "fx")
    assert counted.columns == ("uid", "k") and counted.rows
    qualified = loaded.run_exact("SELECT fx.t.uid FROM fx.t WHERE fx.t.uid IN "
                                 "(SELECT uid FROM t AS q WHERE q.uid = 1)", "fx")
    assert qualified.columns == ("uid",) and {r[0] for r in qualified.rows} == {1}
    hidden = _hidden(loaded, "t", "x")
    for sql in (f'SELECT "{hidden}" FROM t', f'SELECT t."{hidden}" FROM t', 'SELECT nosuch FROM t'):
        with pytest.raises(SqlgateError) as refused:
            loaded.run_exact(sql, "fx")
        assert "__fx" not in refused.value.message


@pytest.mark.parametrize("template", [
    'SELECT SUM("{c}") FROM t',
    'SELECT COUNT(*) FROM t WHERE "{c}" > 0',
    'SELECT "{c}", COUNT(*) FROM t GROUP BY "{c}"',
    'SELECT SUM(t."{c}") FROM t',
    'WITH s AS (SELECT uid, "{c}" AS v FROM t) SELECT SUM(v) FROM s',
])
def test_analyst_sql_naming_a_hidden_column_fails_like_an_unknown_one(loaded, template):
    hidden = _hidden(loaded, "t", "x")  # the stored column, and a name that exists nowhere:
    assert_named_like_an_unknown_column(loaded, template, hidden, hidden.replace("__fx$", "__fy$"))


def test_listings_and_mocks_come_from_metadata(loaded):
    assert_listings_come_from_metadata(loaded, "fx", "t", "__fx")


# ---------------------------------------------------------------- owner's opt-out


def test_stored_sums_false_stores_none_and_answers_alike(loaded, tmp_path):
    """`stored_sums: false` (dataset level): no hidden sum columns, the planner clamps per row,
    and the engine rows are those of the stored columns. It survives a restart."""
    doc = dict(METADATA, stored_sums=False)
    meta = parse_dataset(doc)
    assert not meta.stored_sums and parse_dataset(dataset_to_dict(meta)).stored_sums is False
    assert "stored_sums" not in dataset_to_dict(parse_dataset(METADATA))
    home = tmp_path / "home"
    with Gateway(home) as gw:
        gw.add_dataset(meta, _frames())
        assert all(not t.stored_sums for t in gw.dataset("fx").tables.values())
        stored = {c for (c,) in gw.executor.connection.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'fx'"
        ).fetchall()}
        assert not any(c.startswith("__fx$") for c in stored)
        for sql in QUERIES:
            plan, _ = gw._plan(sql)
            assert not _summed_from_storage(plan.bounded_sql)
            assert _engine_rows(gw, plan.bounded_sql) == \
                _engine_rows(loaded, loaded._plan(sql)[0].bounded_sql)
    with Gateway(home) as gw:
        assert gw.dataset("fx").stored_sums is False
        assert all(not t.stored_sums for t in gw.dataset("fx").tables.values())


@pytest.mark.parametrize("value", ["no", 0, None])
def test_stored_sums_is_a_boolean(value):
    with pytest.raises(SqlgateError) as err:
        parse_dataset(dict(METADATA, stored_sums=value))
    assert err.value.field == "stored_sums"
