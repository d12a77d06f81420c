"""Joins with public tables on a unique key keep the direct path (issue 7).

A public table joined ON one of its unique columns (established by the catalog from its
content at load time) meets at most one row per private row, so a unit truncated to k rows
still has at most k rows after the join. When the key is duplicated in the public table,
the same join would repeat a unit's rows: the planner must then bound per unit.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sqlgate.gateway import Gateway
from sqlgate.metadata import parse_dataset

BIG = 50.0
NATIONS = ["n0", "n1", "n2", "n3"]


def _meta(*, truncate=1, query_time=False):
    bound = {"max_rows_per_unit": truncate} if query_time else {"truncate_rows_per_unit": truncate}
    return parse_dataset({
        "dataset": "shop", "budget": {"epsilon": 1e6, "delta": 1e-3},
        "query": {"epsilon": 1.0, "delta": 1e-7},
        "tables": {
            "people": {"privacy_unit": "uid", "max_groups_per_unit": 1, "max_rows_per_group": 1,
                       **bound,
                       "columns": {"uid": "int", "nation": "int", "region": "int",
                                   "score": {"type": "float", "lower": 0, "upper": 10,
                                             "nullable": False}}},
            "nation": {"public": True,
                       "columns": {"nkey": "int", "rkey": "int", "weight": "float",
                                   "name": {"type": "string", "public_keys": NATIONS}}},
            "region": {"public": True,
                       "columns": {"rkey": "int",
                                   "rname": {"type": "string", "public_keys": ["east", "west"]}}},
        }})


def _people(n=400, seed=3):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"uid": np.arange(n), "nation": rng.integers(0, 4, n),
                         "region": rng.integers(0, 2, n), "score": rng.uniform(0, 10, n)})


def _nation(duplicate=False):
    rows = [(i, i % 2, 1.0, NATIONS[i]) for i in range(4)]
    if duplicate:
        rows.append((1, 1, 2.0, "n1"))  # nkey 1 twice: a private row would meet two rows
    return pd.DataFrame(rows, columns=["nkey", "rkey", "weight", "name"])


def _region():
    return pd.DataFrame({"rkey": [0, 1], "rname": ["east", "west"]})


def _gateway(tmp_path, *, duplicate=False, **meta):
    gw = Gateway(tmp_path / "home")
    gw.add_dataset(_meta(**meta), {"people": _people(), "nation": _nation(duplicate),
                                   "region": _region()})
    return gw


BY_NATION = ("SELECT name, COUNT(*) AS n FROM people JOIN nation ON nation = nkey "
             "GROUP BY name")


def test_catalog_establishes_unique_columns_of_public_tables_only(tmp_path):
    with _gateway(tmp_path) as gw:
        tables = gw.dataset("shop").tables
        assert tables["nation"].unique_columns == {"nkey", "name"}  # rkey repeats; float skipped
        assert tables["region"].unique_columns == {"rkey", "rname"}
        assert tables["people"].unique_columns == frozenset()       # never for private tables
    with _gateway(tmp_path / "dup", duplicate=True) as gw:
        assert gw.dataset("shop").tables["nation"].unique_columns == frozenset()


@pytest.mark.parametrize("query_time", [False, True])
def test_join_on_a_unique_public_key_takes_the_direct_path(tmp_path, query_time):
    with _gateway(tmp_path, query_time=query_time) as gw:
        plan, _ = gw._plan(BY_NATION)
        assert plan.direct_path
        assert "per_unit" not in plan.bounded_sql  # (query-time truncation ranks in its read)
        assert plan.measures[0].sensitivity.l1 == 1
        rows = dict(gw.query(BY_NATION, analyst="a", epsilon=BIG).rows)
    truth = _people()["nation"].value_counts()
    assert set(rows) == set(NATIONS)
    for i, name in enumerate(NATIONS):
        assert rows[name] == pytest.approx(truth[i], abs=3)


def test_duplicated_public_key_keeps_the_per_unit_path(tmp_path):
    """The direct path here would count the people of nation 1 twice (sensitivity 2, planned 1)."""
    with _gateway(tmp_path, duplicate=True) as gw:
        plan, _ = gw._plan(BY_NATION)
        assert not plan.direct_path
        assert "per_unit" in plan.bounded_sql
        bounded = dict(gw.executor.run(plan.bounded_sql).rows)
        direct_sql = ('SELECT name, COUNT(*) FROM shop.people JOIN shop.nation ON nation = nkey '
                      'GROUP BY name')
        doubled = dict(gw.executor.run(direct_sql).rows)
    truth = _people()["nation"].value_counts()
    # Each unit counts once in its one group (L0 = Linf = 1), not once per matching row.
    assert sum(bounded.values()) == len(_people())
    assert bounded["n1"] == truth[1]
    assert doubled["n1"] == 2 * truth[1]  # what the direct path would have released


def test_chained_public_joins_on_unique_keys_stay_direct(tmp_path):
    sql = ("SELECT rname, COUNT(*) AS n, SUM(score) AS s FROM people "
           "JOIN nation ON nation = nkey JOIN region ON nation.rkey = region.rkey GROUP BY rname")
    with _gateway(tmp_path) as gw:
        plan, _ = gw._plan(sql)
        assert plan.direct_path
        left, _ = gw._plan("SELECT COUNT(*) AS n FROM people LEFT JOIN nation ON nation = nkey")
        assert left.direct_path


@pytest.mark.parametrize("sql", [
    # the join key is not unique in the public table (rkey repeats across nations)
    "SELECT rname, COUNT(*) FROM people JOIN nation ON region = nation.rkey "
    "JOIN region ON nation.rkey = region.rkey GROUP BY rname",
    # a public table first: it has no ON of its own to make it meet one row per private row
    "SELECT name, COUNT(*) FROM nation JOIN people ON nation = nkey GROUP BY name",
    # the unique key equated to a column of the public table itself, not of a table before it
    "SELECT name, COUNT(*) FROM people JOIN nation ON nkey = nation.rkey AND nation >= 0 "
    "GROUP BY name",
    # the equality is not a top-level conjunct (OR): rows can match more than once
    "SELECT name, COUNT(*) FROM people JOIN nation ON nation = nkey OR region = nation.rkey "
    "GROUP BY name",
    # a private column of another type than the unique key (the cast could merge values)
    "SELECT name, COUNT(*) FROM people JOIN nation ON CAST(score AS BIGINT) = nkey GROUP BY name",
])
def test_joins_without_a_unique_match_keep_the_per_unit_path(tmp_path, sql):
    with _gateway(tmp_path) as gw:
        plan, _ = gw._plan(sql)
        assert not plan.direct_path


def test_uniqueness_follows_the_loaded_data_and_survives_a_restart(tmp_path):
    home = tmp_path / "home"
    with Gateway(home) as gw:
        gw.add_dataset(_meta(), {"people": _people(), "nation": _nation(), "region": _region()})
        assert gw._plan(BY_NATION)[0].direct_path
    with Gateway(home) as gw:  # restored from the saved catalog with the data it was checked on
        assert gw.dataset("shop").tables["nation"].unique_columns == {"nkey", "name"}
        assert gw._plan(BY_NATION)[0].direct_path
        # Reloading with a duplicated key withdraws the fact, and plans follow the new version.
        gw.add_dataset(_meta(), {"people": _people(), "nation": _nation(duplicate=True),
                                 "region": _region()}, replace=True)
        assert not gw._plan(BY_NATION)[0].direct_path
    with Gateway(home) as gw:
        assert gw.dataset("shop").tables["nation"].unique_columns == frozenset()
        assert not gw._plan(BY_NATION)[0].direct_path
