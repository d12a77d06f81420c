"""PG wire catalog statements are audited like Trino's: one record per executed statement
(simple or extended protocol: the Describe before Execute adds none), action "catalog", its
decision and row count, never result values; nothing is spent."""
from __future__ import annotations

import json

from sqlgate.errors import TooManyRequests
from tests._require import require_module


def _last_seq(pg) -> int:
    records = pg.audit.records(limit=100000)
    return records[-1]["seq"] if records else 0


def _catalog_records(pg, after: int) -> list[dict]:
    return pg.audit.records(action="catalog", channel="pgwire", after_seq=after, limit=1000)


SQL = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'town'"


def test_catalog_statements_are_audited_once_without_values(pg):
    psycopg = require_module("psycopg")
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        before, queries = _last_seq(pg), pg.queries()
        extended = conn.execute(SQL).fetchall()                    # Parse/Bind/Describe/Execute
        simple = conn.execute(SQL, prepare=False).fetchall()
        with conn.cursor() as cursor:
            cursor.execute(SQL, prepare=False)
        raw = conn.pgconn.exec_(SQL.encode())                        # one simple Query message
        assert raw.ntuples == len(extended) > 0 and simple == extended
    records = _catalog_records(pg, before)
    assert len(records) == 4 and all(r["query"] == SQL for r in records)
    for record in records:
        assert record["decision"] == "ok" and record["actor"] == "alice"
        assert record["rows_out"] == len(extended) and record["code"] is None
        text = json.dumps({k: v for k, v in record.items() if k != "query"})
        assert all(row[0] not in text for row in extended)
    assert pg.queries() == queries


def test_refused_catalog_statements_are_audited_with_their_code(pg):
    """A user at the concurrency limit is refused catalog work: one 'refused' record."""
    psycopg = require_module("psycopg")
    limiter = pg.service.limiter
    slots = [limiter.slot("alice") for _ in range(limiter.limit)]
    for slot in slots:
        slot.__enter__()
    try:
        with psycopg.connect(pg.dsn(), autocommit=True) as conn:
            before = _last_seq(pg)
            raw = conn.pgconn.exec_(SQL.encode())
            assert raw.error_message
    finally:
        for slot in slots:
            slot.__exit__(None, None, None)
    records = _catalog_records(pg, before)
    assert len(records) == 1
    assert records[0]["query"] == SQL and records[0]["decision"] == "refused"
    assert records[0]["code"] == TooManyRequests.code and records[0]["rows_out"] is None
