"""The rewriter: refusals with clear messages, bounds from metadata only, bounded SQL shape."""
import re

import pytest
from sqlglot import exp

from rewriter import plan_query
from sqlgate.errors import (PolicyRefused, ReadOnlyViolation, SqlSyntaxError, UndefinedColumn,
                            UndefinedTable, UnsupportedQuery)

from tests.core.conftest import people_metadata

META = people_metadata()


def resolve(node, meta=META):
    table = meta.table(node.name)
    if table is None or (node.db and node.db != meta.name):
        raise UndefinedTable(f"table '{node.name}' does not exist")
    return meta, table


def plan(sql, meta=META):
    return plan_query(sql, lambda node: resolve(node, meta))


@pytest.mark.parametrize("sql,error,words", [
    ("SELECT * FROM people", PolicyRefused, "SELECT *"),
    ("SELECT age FROM people", PolicyRefused, "raw rows"),
    ("SELECT age, COUNT(*) FROM people", PolicyRefused, "neither aggregated nor a GROUP BY key"),
    ("SELECT pid, COUNT(*) FROM people GROUP BY pid", PolicyRefused, "privacy unit"),
    ("SELECT DISTINCT region FROM people", PolicyRefused, "DISTINCT"),
    ("SELECT COUNT(*) OVER () FROM people", PolicyRefused, "window"),
    ("SELECT SUM(income) FROM people", PolicyRefused, "no declared bounds"),
    ("SELECT AVG(pid) FROM people", PolicyRefused, "privacy unit"),
    ("SELECT COUNT(*) FROM read_csv('/etc/passwd')", PolicyRefused, "only dataset tables"),
    ("SELECT COUNT(DISTINCT city) FROM people", UnsupportedQuery, "privacy unit"),
    ("SELECT SUM(age * 2) FROM people", UnsupportedQuery, "single column"),
    ("SELECT COUNT(*) FROM people WHERE age IN (SELECT age FROM people)", UnsupportedQuery, "subqueries"),
    ("SELECT MAX(income) FROM people", PolicyRefused, "no declared bounds"),
    ("SELECT PERCENTILE_DISC(0.5) WITHIN GROUP (ORDER BY age) FROM people", UnsupportedQuery, "PERCENTILE"),
    ("SELECT QUANTILE_CONT(age, 1.5) FROM people", UnsupportedQuery, "between 0 and 1"),
    ("SELECT COUNT(*) FROM people a JOIN people b ON a.age = b.age", PolicyRefused, "privacy unit"),
    ("SELECT COUNT(*) FROM people a CROSS JOIN people b", PolicyRefused, "cross"),
    ("SELECT COUNT(*) FROM people a, people b", PolicyRefused, "ON condition"),
    ("SELECT COUNT(*) FROM people a RIGHT JOIN people b ON a.pid = b.pid", UnsupportedQuery, "RIGHT"),
    ("WITH x AS (SELECT pid, COUNT(*) AS c FROM people GROUP BY pid) SELECT AVG(c) FROM x", UnsupportedQuery, "select rows"),
    ("SELECT COUNT(*) FROM (SELECT DISTINCT region FROM people) t", UnsupportedQuery, "select rows"),
    ("SELECT COUNT(*) FROM (SELECT * FROM people LIMIT 5) t", UnsupportedQuery, "select rows"),
    ("SELECT CASE WHEN age > 50 THEN city ELSE 'x' END AS b, COUNT(*) FROM people GROUP BY 1", UnsupportedQuery, "literal results"),
    ("SELECT FLOOR(age / 10) AS d, COUNT(*) FROM people GROUP BY 1", UnsupportedQuery, "GROUP BY supports"),
    ("SELECT COUNT(*) FROM people UNION SELECT COUNT(*) FROM people", UnsupportedQuery, "UNION"),
    ("SELECT COUNT(*) FROM people WHERE regexp_matches(note, 'a')", UnsupportedQuery, "REGEXP"),
    ("SELECT COUNT(*) FROM people WHERE md5(note) = 'x'", UnsupportedQuery, "MD5"),
    ("SELECT COUNT(*) FROM people GROUP BY ROLLUP (region)", UnsupportedQuery, "ROLLUP"),
    ("SELECT COUNT(*); SELECT COUNT(*) FROM people", UnsupportedQuery, "one statement"),
    ("SELECT 1", UnsupportedQuery, "FROM"),
    ("SELECT COUNT(*) FROM people LIMIT $1", UnsupportedQuery, "parameter"),
    ("DELETE FROM people", ReadOnlyViolation, "read-only"),
    ("INSERT INTO people VALUES (1)", ReadOnlyViolation, "read-only"),
    ("CREATE TABLE t AS SELECT * FROM people", ReadOnlyViolation, "read-only"),
    ("DROP TABLE people", ReadOnlyViolation, "read-only"),
    ("COPY people TO '/tmp/x.csv'", PolicyRefused, "COPY"),
    ("ATTACH 'x.db' AS x", PolicyRefused, "ATTACH"),
    ("PRAGMA database_list", PolicyRefused, "PRAGMA"),
    ("INSTALL httpfs", PolicyRefused, "INSTALL"),
    ("SELECT COUNT(* FROM people", SqlSyntaxError, "syntax"),
    ("SELECT COUNT(*) FROM people TABLESAMPLE (10 PERCENT)", UnsupportedQuery, "TABLESAMPLE"),
    ("SELECT COUNT(*), version() FROM people", UnsupportedQuery, "result expressions"),
    ("SELECT COUNT(*) FROM nowhere", UndefinedTable, "nowhere"),
    ("SELECT COUNT(*) FROM people WHERE nope > 1", UndefinedColumn, "nope"),
])
def test_unsupported_or_unsafe_sql_is_refused_with_a_reason(sql, error, words):
    with pytest.raises(error) as err:
        plan(sql)
    assert words.lower() in err.value.message.lower()


def test_sensitivity_comes_from_metadata_bounds():
    meta = people_metadata(max_groups_per_unit=2, max_rows_per_group=3)
    p = plan("SELECT region, COUNT(*), SUM(age), SUM(score) FROM people GROUP BY region", meta)
    by_kind = {(m.kind, m.column): m for m in p.measures}
    count = by_kind[("count", None)].sensitivity
    assert (count.l0, count.linf, count.l1) == (2, 3, 6)
    age = by_kind[("sum", "people.age")]
    assert age.fixed_point_bits == 0
    assert (age.sensitivity.linf, age.sensitivity.l1) == (3 * 100, 2 * 3 * 100)
    score = by_kind[("sum", "people.score")]
    assert score.sensitivity.linf == 3 * 10 * score.scale_factor
    assert score.sensitivity.l2 == pytest.approx(2 ** 0.5 * 3 * 10 * score.scale_factor)


def test_bounds_in_sql_are_the_declared_ones_and_data_is_clamped():
    p = plan("SELECT SUM(score) FROM people")
    sql = p.bounded_sql
    assert ('CASE WHEN CAST("people"."score" AS DOUBLE) >= 0 THEN CASE WHEN '
            'CAST("people"."score" AS DOUBLE) <= 10 THEN CAST("people"."score" AS DOUBLE) '
            'ELSE 10 END ELSE 0 END') in sql
    # no statistic of the data (MIN/MAX/quantile) is ever computed to find bounds
    for word in ("MIN(", "MAX(", "QUANTILE", "PERCENTILE"):
        assert word not in sql.upper()


def test_per_unit_preaggregation_and_no_window_over_raw_rows():
    meta = people_metadata(max_groups_per_unit=2)
    p = plan("SELECT city, COUNT(*) FROM people WHERE age > 3 GROUP BY city", meta)
    tree = p.bounded
    ctes = {cte.alias: cte.this for cte in tree.args["with_"].expressions}
    assert set(ctes) == {"src", "per_unit", "__groups", "bounded"}
    per_unit_groups = [c.name for c in ctes["per_unit"].args["group"].expressions]
    assert per_unit_groups == ["__unit", "k0"]
    assert ctes["src"].find(exp.Window) is None and ctes["per_unit"].find(exp.Window) is None
    window = ctes["bounded"].find(exp.Window)
    # the window ranks the per-unit groups (of the units over L0), never raw rows
    assert window is not None and ctes["__groups"].args["from_"].this.name == "per_unit"
    assert {t.name for t in ctes["bounded"].find_all(exp.Table)} == {"per_unit", "__groups"}
    order_sql = window.args["order"].sql().upper()
    assert "HASH" in order_sql and "RANDOM" not in order_sql


def test_public_keys_filter_rows_and_need_no_threshold():
    p = plan("SELECT region, COUNT(*) FROM people GROUP BY region")
    assert p.keys.mode == "public"
    assert {c[0] for c in p.keys.public_cells} == {"north", "south", "east", "west"}
    assert "IN ('north', 'south', 'east', 'west')" in p.bounded_sql


def test_keys_without_public_set_use_a_threshold_on_units():
    p = plan("SELECT city, SUM(age) FROM people GROUP BY city")
    assert p.keys.mode == "threshold"
    assert p.measure(p.keys.threshold_measure).kind in ("count", "units")


def test_where_is_made_total():
    p = plan("SELECT COUNT(*) FROM people WHERE CAST(note AS INT) / age > 2")
    assert "TRY(" in p.bounded_sql and "TRY_CAST" in p.bounded_sql
    assert not re.search(r"(?<!TRY_)CAST\(note", p.bounded_sql)


def test_having_order_limit_are_post_processing_only():
    p = plan("SELECT region, COUNT(*) AS n FROM people GROUP BY region HAVING COUNT(*) > 5 "
             "ORDER BY n DESC LIMIT 2")
    assert "LIMIT" not in p.bounded_sql.upper() and "ORDER" not in p.bounded_sql.split("bounded")[-1].upper()
    post = p.postprocess.sql(dialect="duckdb")
    assert "FROM noisy" in post and "LIMIT 2" in post and '"m0" > 5' in post


def test_ingest_truncation_allows_the_direct_path():
    meta = people_metadata(truncate_rows_per_unit=1)
    p = plan("SELECT region, COUNT(*), SUM(age) FROM people GROUP BY region", meta)
    assert p.direct_path
    assert "per_unit" not in p.bounded_sql
    assert p.measures[0].sensitivity.l1 == 1


def test_row_level_cte_and_subquery_are_inlined():
    p = plan("WITH adults AS (SELECT pid, age, region FROM people WHERE age >= 18) "
             "SELECT region, COUNT(*) AS n FROM adults WHERE age < 65 GROUP BY region")
    sql = p.bounded_sql
    assert "adults" not in sql and '"town"."people"' in sql
    assert ">= 18" in sql and "< 65" in sql
    assert [o.name for o in p.outputs] == ["region", "n"]
    q = plan("SELECT COUNT(*) FROM (SELECT age FROM people WHERE age > 3) t")
    assert [o.name for o in q.outputs] == ["count"]


def test_join_on_the_unit_bounds_after_the_join():
    p = plan("SELECT a.region, COUNT(*) FROM people a JOIN people b ON a.pid = b.pid "
             "GROUP BY a.region")
    tree = p.bounded
    src = {cte.alias: cte.this for cte in tree.args["with_"].expressions}["src"]
    assert src.args.get("joins")
    assert p.measures[0].sensitivity.l1 == 1  # the self-join cannot raise the bound


def test_histogram_bins_are_public_keys():
    p = plan("SELECT CASE WHEN age < 18 THEN 'child' WHEN age < 65 THEN 'adult' ELSE 'senior' END AS band, "
             "COUNT(*) FROM people GROUP BY 1")
    assert p.keys.mode == "public"
    assert {c[0] for c in p.keys.public_cells} == {"child", "adult", "senior"}
    w = plan("SELECT width_bucket(age, 0, 100, 10) AS b, COUNT(*) FROM people GROUP BY 1")
    assert w.keys.mode == "public" and len(w.keys.public_cells) == 12


def test_quantiles_plan_value_query_bounded_per_unit():
    meta = people_metadata(max_groups_per_unit=2, max_rows_per_group=3)
    p = plan("SELECT region, MEDIAN(age), MIN(score), MAX(score) FROM people GROUP BY region", meta)
    assert [q.alpha for q in p.quantiles] == [0.5, 0.0, 1.0]
    assert p.quantiles[0].candidates == tuple(float(v) for v in range(0, 101))
    assert len(p.quantiles[1].candidates) == 1024
    assert p.quantiles[0].rows_per_unit == 3 and p.quantiles[0].groups_per_unit == 2
    assert "__row_rank" in p.quantile_sql and "<= 3" in p.quantile_sql
