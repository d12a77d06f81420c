"""The TPC-H benchmark harness, on a tiny scale: JSON shape, and that raw DuckDB and the DP
gateway are measured on the same query. Timings are never asserted."""
from __future__ import annotations

import json
import math

import pytest

from tests._require import require_program

QUERIES = ("q01_count_by_priority", "q09_median_price", "q15_pricing_summary")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    require_program("tpchgen-cli")
    from bench import tpch_bench

    tmp = tmp_path_factory.mktemp("bench")
    options = tpch_bench.Options(scale=0.01, runs=2, query_names=QUERIES, threads=1,
                                 out=tmp / "out.json", data_dir=tmp / "data",
                                 smartnoise=True, smartnoise_python=tmp / "no-venv" / "python")
    result = tpch_bench.run(options)
    return result, json.loads((tmp / "out.json").read_text())


def test_json_has_every_query_with_raw_and_both_dp_variants(report):
    result, saved = report
    assert saved["settings"]["scale"] == 0.01 and saved["settings"]["runs"] == 2
    assert [q["name"] for q in saved["queries"]] == list(QUERIES)
    for q in saved["queries"]:
        assert len(q["raw"]["runs_ms"]) == 2 and q["raw"]["median_ms"] > 0
        for variant in ("query", "ingest"):
            dp = q["dp"][variant]
            assert dp["status"] == "ok", dp
            assert len(dp["runs_ms"]) == 2
            assert dp["ratio_vs_raw"] == pytest.approx(dp["median_ms"] / q["raw"]["median_ms"])
            assert dp["cost"]["epsilon"] == 1.0
            assert math.isfinite(dp["rel_error_median"]) and dp["rel_error_median"] >= 0
    summary = saved["summary"]
    for variant in ("query", "ingest"):
        assert summary[variant]["median_ratio_vs_raw"] > 0
        assert summary[variant]["refused"] == []
    assert set(summary["targets"]) >= {"query_time_bounding_ratio_le_5",
                                       "ingest_time_bounding_ratio_le_1.5"}


def test_raw_and_dp_answer_the_same_query(report):
    _, saved = report
    for q in saved["queries"]:
        truth_keys = {tuple(row[i] for i in q["dp"]["query"]["key_positions"]) for row in q["truth"]}
        for variant in ("query", "ingest"):
            dp = q["dp"][variant]
            width = {len(row) for row in dp["example"]}
            assert width == {len(q["truth"][0])}, "DP and raw answers have different columns"
            got_keys = {tuple(row[i] for i in dp["key_positions"]) for row in dp["example"]}
            # public keys: every true group (and absent public cells as noisy zeros)
            assert truth_keys <= got_keys
    # both variants use the direct path on one private table: truncated at ingest, or read
    # through the query-time truncation (max_rows_per_unit); the FK-path join only when
    # lineitem is truncated at ingest through orders (o_orderkey an enforced key)
    by_name = {q["name"]: q for q in saved["queries"]}
    assert by_name["q01_count_by_priority"]["dp"]["ingest"]["direct_path"] is True
    assert by_name["q01_count_by_priority"]["dp"]["query"]["direct_path"] is True
    assert by_name["q15_pricing_summary"]["dp"]["query"]["direct_path"] is False
    assert by_name["q15_pricing_summary"]["dp"]["ingest"]["direct_path"] is True


def test_missing_smartnoise_is_reported_not_faked(report):
    _, saved = report
    for key in ("smartnoise", "smartnoise_pandas"):
        assert saved["smartnoise"][key]["available"] is False
        assert "smartnoise_setup.sh" in saved["smartnoise"][key]["reason"]
        for q in saved["queries"]:
            assert q[key]["status"] == "unavailable"
            assert "median_ms" not in q[key]


def test_printed_table_has_a_row_per_query(report):
    from bench import tpch_bench

    result, _ = report
    text = tpch_bench.table(result)
    for name in QUERIES:
        assert name in text
    assert "median DP/raw" in text


def test_relative_errors_per_cell():
    from bench.tpch.measure import relative_errors

    truth = [("a", 100, 10.0), ("b", 0, 5.0), ("c", 50, None)]
    got = [("a", 110, 9.0), ("b", 3, 5.5)]
    # a: 0.1 and 0.1; b: count 0 has no relative error, 0.1; c: missing -> 1.0, None skipped
    assert sorted(relative_errors(truth, got, [0])) == pytest.approx([0.1, 0.1, 0.1, 1.0])


def test_unknown_query_names_are_refused():
    from bench.tpch import queries

    with pytest.raises(ValueError, match="unknown benchmark queries: nope"):
        queries.select(["nope"])
    assert len(queries.SUITE) >= 15


def test_query_time_metadata_bounds_like_ingest_and_like_smartnoise():
    """The fair comparison: the query-time variant truncates to the ingest variant's k when it
    reads, and SmartNoise gets the same total per unit as max_ids."""
    from bench import tpch_bench
    from bench.tpch import data

    query, ingest = data.metadata("query"), data.metadata("ingest")
    sn_tables = tpch_bench.smartnoise_metadata()["tpch"]["tpch"]
    for name in ("customer", "orders"):
        q, i = query.table(name), ingest.table(name)
        assert q.rows_per_unit == i.rows_per_unit
        assert q.truncate_rows_per_unit is None
        assert sn_tables[name]["max_ids"] == q.rows_per_unit
        # the per-unit fallback (public-table joins) bounds the same total per unit
        assert q.max_groups_per_unit * q.max_rows_per_group == q.rows_per_unit
    # orders are truncated when read; customers have one row each (a key checked at load)
    assert query.table("orders").truncated_at_query_time
    assert query.table("orders").max_rows_per_unit == ingest.table("orders").truncate_rows_per_unit
    assert query.table("customer").unit_is_key and ingest.table("customer").unit_is_key
