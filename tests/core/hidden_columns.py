"""Checks shared by every kind of hidden column the catalog stores beside the declared ones
(stored sums, stored truncation ranks): no one can name them, and every listing comes from
the metadata."""
from __future__ import annotations

import json

import pytest
from sqlglot import parse_one

from sqlgate.errors import SqlgateError, UndefinedColumn
from sqlgate.metadata import dataset_to_dict

PG_LISTINGS = ("SELECT column_name FROM information_schema.columns WHERE table_name = '{t}'",
               "SELECT a.attname FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c "
               "ON c.oid = a.attrelid WHERE c.relname = '{t}'")


def assert_named_like_an_unknown_column(gw, template: str, hidden: str, nowhere: str) -> None:
    """`template` naming the hidden column fails in query, describe and explain exactly as
    with `nowhere`, a name that exists nowhere: same error class, same message."""
    outcomes = []
    for column in (hidden, nowhere):
        sql = template.format(c=column)
        for call in (lambda: gw.query(sql, analyst="ana"), lambda: gw.describe(sql),
                     lambda: gw.explain(sql, analyst="ana")):
            with pytest.raises(SqlgateError) as refused:
                call()
            outcomes.append((type(refused.value), refused.value.message.replace(column, "?")))
    assert len(set(outcomes)) == 1, outcomes
    assert outcomes[0][0] is UndefinedColumn


def assert_listings_come_from_metadata(gw, dataset: str, table: str, prefix: str) -> None:
    """HTTP's metadata, mock tables, Trino's and PG wire's catalogs list the declared columns
    of `table` only; nothing named with `prefix` shows."""
    from server.pgwire.catalog import SyntheticCatalog
    from server.trino.metadata import CatalogView

    meta = gw.dataset(dataset)
    declared = list(meta.tables[table].columns)
    assert prefix not in json.dumps(dataset_to_dict(meta), default=str)
    assert list(gw.mock_table(dataset, table, rows=3).columns) == declared
    trino = CatalogView((meta,), "ana").rows("information_schema", "columns")
    assert {r[3] for r in trino if r[1] == dataset and r[2] == table} == set(declared)
    catalog = SyntheticCatalog([meta], user="ana", settings={})
    try:
        for sql in PG_LISTINGS:
            sql = sql.format(t=table)
            answer = catalog.run(parse_one(sql, read="postgres"))
            assert {r[0] for r in answer.rows} == set(declared), sql
    finally:
        catalog.close()
