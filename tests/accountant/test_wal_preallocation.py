"""The SQLite ledger grows its WAL once at open (commits then overwrite it in place) without
touching the database or any committed charge."""
from __future__ import annotations

import sqlite3

from accountant import SqliteLedger
from accountant.ledger import ChargeRequest
from accountant.sqlite_ledger import WAL_PREALLOCATE_BYTES


def _charge(ledger: SqliteLedger, analyst: str) -> int:
    request = ChargeRequest(analyst=analyst, dataset="d", measure="pure", epsilon=0.5,
                            delta=0.0, rho=0.0, query_key="k", query_text="SELECT 1")
    return ledger.charge(request, lambda override, spent: None, answer=b"noisy")


def test_wal_is_grown_at_open_and_nothing_else_changes(tmp_path):
    path = tmp_path / "ledger.sqlite"
    ledger = SqliteLedger(path)
    wal = path.with_name(path.name + "-wal")
    assert wal.stat().st_size >= WAL_PREALLOCATE_BYTES
    _charge(ledger, "ana")
    # The padding was rolled back: no table of it, the database file did not grow by it,
    # and the charge committed after it is intact and readable from another connection.
    assert path.stat().st_size < WAL_PREALLOCATE_BYTES // 4
    with sqlite3.connect(path) as other:
        names = {row[0] for row in other.execute("SELECT name FROM sqlite_master")}
        assert not any("padding" in name for name in names)
        assert other.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert other.execute("SELECT COUNT(*) FROM charges").fetchone() == (1,)
    # The page cache of the kept connection is back to its default after the padding.
    with ledger._connection() as conn:
        assert conn.execute("PRAGMA cache_size").fetchone()[0] != 16


def test_reopening_keeps_charges_and_does_not_pad_twice(tmp_path):
    path = tmp_path / "ledger.sqlite"
    first = SqliteLedger(path)
    charge_id = _charge(first, "ana")
    wal = path.with_name(path.name + "-wal")
    size = wal.stat().st_size
    second = SqliteLedger(path)  # another process would open it like this
    assert wal.stat().st_size == size
    assert [row["id"] for row in second.history("ana")] == [charge_id]
    assert len(first.history("ana")) == 1
