"""Trino catalog statements are audited like PG wire's: one record per statement, action
"catalog", its decision and row count, never result values; they spend nothing."""
from __future__ import annotations

import json

from tests.trino.test_trino_protocol import follow, post


def _catalog_records(live, after: int) -> list[dict]:
    return live.state.audit.records(action="catalog", channel="trino", after_seq=after,
                                    limit=1000)


def _last_seq(live) -> int:
    records = live.state.audit.records(limit=100000)
    return records[-1]["seq"] if records else 0


def _rows(live, sql: str) -> list:
    documents = follow(live, post(live, sql))
    assert "error" not in documents[-1], documents[-1]
    return [row for doc in documents for row in doc.get("data", [])]


def test_catalog_statements_are_audited_once_without_values(live):
    before = _last_seq(live)
    spent = live.state.gateway.budget("ann", "hospital").spent_epsilon
    sql = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'hospital'"
    rows = _rows(live, sql)
    assert rows
    shown = _rows(live, "SHOW TABLES")
    records = _catalog_records(live, before)
    assert [r["query"] for r in records] == [sql, "SHOW TABLES"]
    first, second = records
    assert first["decision"] == "ok" and first["actor"] == "ann" and first["role"] == "analyst"
    assert first["rows_out"] == len(rows) and second["rows_out"] == len(shown)
    assert first["source"] and first["code"] is None
    for record in records:
        # No answer in the record: only the statement text (which names no table) and counts.
        text = json.dumps({k: v for k, v in record.items() if k != "query"})
        assert all(str(row[0]) not in text for row in rows + shown)
        assert not record["epsilon"] and not record["rewritten"]
    assert live.state.gateway.budget("ann", "hospital").spent_epsilon == spent


def test_failed_catalog_statements_are_audited_with_their_code(live):
    before = _last_seq(live)
    sql = "SELECT CAST('abc' AS INTEGER)"
    documents = follow(live, post(live, sql))
    assert "error" in documents[-1]
    records = _catalog_records(live, before)
    assert len(records) == 1
    assert records[0]["query"] == sql and records[0]["decision"] in ("refused", "error")
    assert records[0]["code"] and records[0]["rows_out"] is None


def test_dp_and_session_statements_are_not_catalog_records(live):
    before = _last_seq(live)
    _rows(live, "SELECT COUNT(*) FROM patients")
    _rows(live, "SET SESSION epsilon = 0.5")
    assert _catalog_records(live, before) == []
