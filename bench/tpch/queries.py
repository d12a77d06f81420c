"""The TPC-H DP query suite: group-bys, joins on the unit and along the FK path, public
tables, thresholded keys, histograms, CTEs and quantiles.

Every query is valid both for sqlgate (PostgreSQL dialect) and for raw DuckDB, so the raw
latency and the truth come from the very same text. Output columns that are not aggregates
are group keys; cells are matched on them when errors are computed.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BenchQuery:
    name: str
    sql: str
    features: tuple[str, ...]


SUITE: tuple[BenchQuery, ...] = (
    BenchQuery("q01_count_by_priority",
               "SELECT o_orderpriority, COUNT(*) AS n FROM orders GROUP BY o_orderpriority",
               ("group-by", "public-keys")),
    BenchQuery("q02_sum_by_status",
               "SELECT o_orderstatus, SUM(o_totalprice) AS revenue FROM orders GROUP BY o_orderstatus",
               ("group-by", "sum")),
    BenchQuery("q03_avg_filtered",
               "SELECT o_orderpriority, COUNT(*) AS n, AVG(o_totalprice) AS avg_price FROM orders "
               "WHERE o_orderdate >= DATE '1995-01-01' GROUP BY o_orderpriority",
               ("group-by", "where", "avg")),
    BenchQuery("q04_global_totals",
               "SELECT COUNT(*) AS n, SUM(o_totalprice) AS total FROM orders",
               ("no-group", "sum")),
    BenchQuery("q05_distinct_customers",
               "SELECT COUNT(DISTINCT o_custkey) AS customers FROM orders",
               ("no-group", "count-distinct-unit")),
    BenchQuery("q06_stddev_by_status",
               "SELECT o_orderstatus, AVG(o_totalprice) AS mean, STDDEV(o_totalprice) AS sd "
               "FROM orders GROUP BY o_orderstatus",
               ("group-by", "stddev")),
    BenchQuery("q07_price_histogram",
               "SELECT CASE WHEN o_totalprice < 50000 THEN 'a' WHEN o_totalprice < 150000 THEN 'b' "
               "WHEN o_totalprice < 300000 THEN 'c' ELSE 'd' END AS band, COUNT(*) AS n "
               "FROM orders GROUP BY band",
               ("histogram", "case-bins")),
    BenchQuery("q08_clerk_threshold",
               "SELECT o_clerk, COUNT(*) AS n FROM orders GROUP BY o_clerk",
               ("group-by", "threshold-keys")),
    BenchQuery("q09_median_price",
               "SELECT MEDIAN(o_totalprice) AS median_price FROM orders",
               ("quantile", "no-group")),
    BenchQuery("q10_p90_by_priority",
               "SELECT o_orderpriority, PERCENTILE_CONT(0.9) WITHIN GROUP (ORDER BY o_totalprice) AS p90 "
               "FROM orders GROUP BY o_orderpriority",
               ("quantile", "group-by")),
    BenchQuery("q11_segment_balance",
               "SELECT c_mktsegment, COUNT(*) AS n, AVG(c_acctbal) AS avg_balance FROM customer "
               "GROUP BY c_mktsegment",
               ("group-by", "avg")),
    BenchQuery("q12_nation_segment",
               "SELECT c_nationkey, c_mktsegment, COUNT(*) AS n FROM customer "
               "GROUP BY c_nationkey, c_mktsegment",
               ("group-by", "two-keys")),
    BenchQuery("q13_join_customer_orders",
               "SELECT c_mktsegment, COUNT(*) AS orders, SUM(o_totalprice) AS revenue "
               "FROM customer JOIN orders ON c_custkey = o_custkey GROUP BY c_mktsegment",
               ("join-on-unit", "sum")),
    BenchQuery("q14_revenue_by_region",
               "SELECT r_name, SUM(o_totalprice) AS revenue FROM orders "
               "JOIN customer ON o_custkey = c_custkey JOIN nation ON c_nationkey = n_nationkey "
               "JOIN region ON n_regionkey = r_regionkey GROUP BY r_name",
               ("join-on-unit", "join-public")),
    BenchQuery("q15_pricing_summary",
               "SELECT l_returnflag, l_linestatus, SUM(l_quantity) AS sum_qty, "
               "SUM(l_extendedprice) AS sum_price, AVG(l_discount) AS avg_disc, COUNT(*) AS n "
               "FROM lineitem JOIN orders ON l_orderkey = o_orderkey "
               "WHERE l_shipdate <= DATE '1998-09-02' GROUP BY l_returnflag, l_linestatus",
               ("join-fk-path", "tpch-q1")),
    BenchQuery("q16_late_lines_by_priority",
               "SELECT o_orderpriority, COUNT(*) AS late_lines FROM orders "
               "JOIN lineitem ON l_orderkey = o_orderkey WHERE l_commitdate < l_receiptdate "
               "AND o_orderdate >= DATE '1993-07-01' AND o_orderdate < DATE '1993-10-01' "
               "GROUP BY o_orderpriority",
               ("join-fk-path", "tpch-q4")),
    BenchQuery("q17_shipmode_revenue",
               "SELECT l_shipmode, SUM(l_extendedprice) AS revenue, AVG(l_quantity) AS avg_qty "
               "FROM lineitem JOIN orders ON l_orderkey = o_orderkey "
               "WHERE l_receiptdate >= DATE '1994-01-01' AND l_receiptdate < DATE '1995-01-01' "
               "GROUP BY l_shipmode",
               ("join-fk-path", "tpch-q12")),
    BenchQuery("q18_cte_big_orders",
               "WITH big AS (SELECT o_custkey, o_orderpriority, o_totalprice FROM orders "
               "WHERE o_totalprice > 200000) "
               "SELECT o_orderpriority, COUNT(*) AS n FROM big GROUP BY o_orderpriority",
               ("cte", "group-by")),
    BenchQuery("q19_median_line_price",
               "SELECT l_returnflag, MEDIAN(l_extendedprice) AS median_price FROM lineitem "
               "JOIN orders ON l_orderkey = o_orderkey GROUP BY l_returnflag",
               ("quantile", "join-fk-path")),
    BenchQuery("q20_customers_by_nation",
               "SELECT n_name, COUNT(*) AS customers, AVG(c_acctbal) AS avg_balance FROM customer "
               "JOIN nation ON c_nationkey = n_nationkey GROUP BY n_name",
               ("join-public", "avg")),
)


def select(names: list[str] | None) -> tuple[BenchQuery, ...]:
    """The suite, or the named queries in suite order (unknown names are an error)."""
    if not names:
        return SUITE
    known = {q.name: q for q in SUITE}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown benchmark queries: {', '.join(unknown)}")
    return tuple(q for q in SUITE if q.name in set(names))
