"""Accountant behaviour, run against both ledgers (SQLite file, throwaway PostgreSQL)."""
import math
import sqlite3

import pytest

from accountant import Accountant, Budget, PrivacyCost, SqliteLedger
from accountant.zcdp import epsilon_for_rho, rho_for_epsilon
from sqlgate.errors import BudgetExhausted, Conflict, InvalidParameter, NotFound

SECRET_QUERY = "SELECT COUNT(*) FROM patients WHERE name = 'Alice Secretperson'"


def _accountant(make_ledger, measure="pure", budget=Budget(1.0, 1e-6), **kw) -> Accountant:
    acct = Accountant(make_ledger())
    acct.register_dataset("hospital", measure, budget, **kw)
    return acct


def test_ten_charges_of_a_tenth_fit_in_one(make_ledger):
    acct = _accountant(make_ledger)
    ids = [acct.charge("bob", "hospital", PrivacyCost("pure", 0.1), query_key=f"q{i}")
           for i in range(10)]
    assert len(set(ids)) == 10
    with pytest.raises(BudgetExhausted):
        acct.charge("bob", "hospital", PrivacyCost("pure", 0.1))
    status = acct.status("bob", "hospital")
    assert status.queries == 10 and status.spent_epsilon == 1.0 and status.remaining_epsilon == 0.0
    # other analysts have their own budget
    acct.charge("alice", "hospital", PrivacyCost("pure", 0.1))


def test_exhausted_message_states_remaining_budget_and_no_query_data(make_ledger):
    acct = _accountant(make_ledger)
    for _ in range(19):
        acct.charge("bob", "hospital", PrivacyCost("pure", 0.05), query_key="k-secret",
                    query_text=SECRET_QUERY)
    with pytest.raises(BudgetExhausted) as info:
        acct.charge("bob", "hospital", PrivacyCost("pure", 0.1, delta=1e-7), query_key="k-secret",
                    query_text=SECRET_QUERY)
    err = info.value
    assert err.message.startswith("privacy budget exhausted for analyst 'bob' on dataset 'hospital'")
    assert "needs epsilon=0.1" in err.message
    assert "remaining epsilon=0.05" in err.message and "delta=1e-06" in err.message
    assert err.details["remaining_epsilon"] == pytest.approx(0.05)
    assert err.details["remaining_delta"] == 1e-6
    assert err.details["requested_epsilon"] == 0.1 and err.details["requested_delta"] == 1e-7
    body = repr(err.to_dict())
    assert "Secretperson" not in body and "k-secret" not in body and "patients" not in body
    assert err.http_status == 402


def test_unknown_dataset_is_not_found(make_ledger):
    acct = _accountant(make_ledger)
    cost = PrivacyCost("pure", 0.1)
    for call in (lambda: acct.status("bob", "nope"), lambda: acct.check("bob", "nope", cost),
                 lambda: acct.charge("bob", "nope", cost),
                 lambda: acct.set_budget("bob", "nope", Budget(1.0), set_by="o"),
                 lambda: acct.cached_answer("bob", "nope", "k")):
        with pytest.raises(NotFound, match="nope"):
            call()


def test_check_writes_nothing(make_ledger):
    acct = _accountant(make_ledger)
    acct.charge("bob", "hospital", PrivacyCost("pure", 0.9))
    ledger = acct.ledger
    before = (acct.history(), acct.status("bob", "hospital"))
    watcher = None
    if isinstance(ledger, SqliteLedger):
        watcher = sqlite3.connect(ledger.path)
        version = watcher.execute("PRAGMA data_version").fetchone()[0]
    acct.check("bob", "hospital", PrivacyCost("pure", 0.05))
    with pytest.raises(BudgetExhausted):
        acct.check("bob", "hospital", PrivacyCost("pure", 0.5))
    acct.check("carol", "hospital", PrivacyCost("pure", 0.5))
    assert (acct.history(), acct.status("bob", "hospital")) == before
    assert acct.status("carol", "hospital").queries == 0
    if watcher is not None:
        # data_version changes when any other connection commits a write
        assert watcher.execute("PRAGMA data_version").fetchone()[0] == version
        watcher.close()


def test_budget_precedence_and_override_persists_across_reopen(make_ledger):
    acct = _accountant(make_ledger, analyst_budgets={"bob": Budget(2.0, 1e-6)})
    assert acct.status("bob", "hospital").total == Budget(2.0, 1e-6)
    assert acct.status("eve", "hospital").total == Budget(1.0, 1e-6)
    acct.set_budget("bob", "hospital", Budget(0.3, 0.0), set_by="owner-olga")
    acct.charge("bob", "hospital", PrivacyCost("pure", 0.2))

    reopened = Accountant(make_ledger())  # a new process would do exactly this
    reopened.register_dataset("hospital", "pure", Budget(1.0, 1e-6),
                              analyst_budgets={"bob": Budget(2.0, 1e-6)})
    status = reopened.status("bob", "hospital")
    assert status.total == Budget(0.3, 0.0)
    assert status.spent_epsilon == 0.2 and status.remaining_epsilon == pytest.approx(0.1)
    with pytest.raises(BudgetExhausted):
        reopened.charge("bob", "hospital", PrivacyCost("pure", 0.2))
    # lowering below what was spent: nothing more fits, remaining shows 0, not negative
    reopened.set_budget("bob", "hospital", Budget(0.1, 0.0), set_by="owner-olga")
    assert acct.status("bob", "hospital").remaining_epsilon == 0.0
    with pytest.raises(BudgetExhausted):
        acct.charge("bob", "hospital", PrivacyCost("pure", 1e-6))


def test_cached_answers_are_per_analyst_and_dataset(make_ledger):
    acct = _accountant(make_ledger)
    acct.register_dataset("clinic", "pure", Budget(1.0))
    charge_id = acct.charge("bob", "hospital", PrivacyCost("pure", 0.1), query_key="key-1",
                            query_text="SELECT COUNT(*) FROM t")
    assert acct.cached_answer("bob", "hospital", "key-1") is None
    acct.record_answer(charge_id, b"noisy answer 1")
    assert acct.cached_answer("bob", "hospital", "key-1") == b"noisy answer 1"
    assert acct.cached_answer("alice", "hospital", "key-1") is None
    assert acct.cached_answer("bob", "clinic", "key-1") is None
    assert acct.cached_answer("bob", "hospital", "key-2") is None
    with pytest.raises(Conflict):
        acct.record_answer(charge_id, b"another answer")
    with pytest.raises(NotFound):
        acct.record_answer(10**9, b"x")
    # a later answer for the same key wins
    second = acct.charge("bob", "hospital", PrivacyCost("pure", 0.1), query_key="key-1")
    acct.record_answer(second, b"noisy answer 2")
    assert acct.cached_answer("bob", "hospital", "key-1") == b"noisy answer 2"


def test_history_lists_charges_for_audit(make_ledger):
    acct = _accountant(make_ledger)
    acct.register_dataset("clinic", "zcdp", Budget(1.0, 1e-6))
    acct.charge("bob", "hospital", PrivacyCost("pure", 0.1), query_key="a", query_text="SELECT 1")
    acct.charge("amy", "hospital", PrivacyCost("pure", 0.2))
    acct.charge("bob", "clinic", PrivacyCost("zcdp", 0.5, rho=0.001, delta=1e-8))
    everything = acct.history()
    assert [h["analyst"] for h in everything] == ["bob", "amy", "bob"]
    assert [h["id"] for h in everything] == sorted(h["id"] for h in everything)
    first = everything[0]
    assert first["query_text"] == "SELECT 1" and first["query_key"] == "a"
    assert first["measure"] == "pure" and first["epsilon"] == 0.1 and first["created_at"]
    assert [h["dataset"] for h in acct.history(analyst="bob")] == ["hospital", "clinic"]
    assert len(acct.history(dataset="hospital")) == 2
    only = acct.history(analyst="bob", dataset="clinic")
    assert len(only) == 1 and only[0]["rho"] == 0.001 and only[0]["delta"] == 1e-8


def test_zcdp_budget_semantics(make_ledger):
    acct = _accountant(make_ledger, measure="zcdp", budget=Budget(1.0, 1e-6))
    rho_max = rho_for_epsilon(1.0, 5e-7)
    status = acct.status("bob", "hospital")
    assert status.total_rho == rho_max and status.remaining_rho == rho_max
    # thresholds may use the other half of delta
    acct.charge("bob", "hospital", PrivacyCost("zcdp", delta=4e-7))
    with pytest.raises(BudgetExhausted, match="remaining rho"):
        acct.charge("bob", "hospital", PrivacyCost("zcdp", delta=2e-7))
    acct.charge("bob", "hospital", PrivacyCost("zcdp", 0.9, rho=rho_max * 0.9))
    status = acct.status("bob", "hospital")
    assert status.spent_epsilon == epsilon_for_rho(rho_max * 0.9, 5e-7)
    assert status.spent_epsilon < 1.0 and status.remaining_epsilon == 1.0 - status.spent_epsilon
    assert status.spent_delta == pytest.approx(4e-7 + 5e-7)
    assert status.remaining_delta == pytest.approx(1e-7)
    with pytest.raises(BudgetExhausted) as info:
        acct.charge("bob", "hospital", PrivacyCost("zcdp", 0.4, rho=rho_max * 0.2))
    assert info.value.details["remaining_rho"] == pytest.approx(rho_max * 0.1)
    assert "remaining rho=" in info.value.message
    acct.charge("bob", "hospital", PrivacyCost("zcdp", rho=rho_max * 0.1))
    assert acct.status("bob", "hospital").spent_epsilon <= 1.0 + 1e-9


def test_zcdp_admits_many_more_equal_queries_than_pure(make_ledger):
    """Same per-query epsilon (0.1 at delta 5e-7): pure accounting allows 10, zCDP many more."""
    rho = rho_for_epsilon(0.1, 5e-7)
    acct = _accountant(make_ledger, measure="zcdp", budget=Budget(1.0, 1e-6))
    acct.register_dataset("pure-twin", "pure", Budget(1.0, 1e-6))
    zcdp_n = pure_n = 0
    while True:
        try:
            acct.charge("bob", "hospital", PrivacyCost("zcdp", 0.1, rho=rho))
        except BudgetExhausted:
            break
        zcdp_n += 1
    while True:
        try:
            acct.charge("bob", "pure-twin", PrivacyCost("pure", 0.1))
        except BudgetExhausted:
            break
        pure_n += 1
    assert pure_n == 10
    expected = max(n for n in range(1, 1000) if math.fsum([rho] * n) <= rho_for_epsilon(1.0, 5e-7)
                   * (1 + 1e-12))
    assert zcdp_n == expected and zcdp_n > 5 * pure_n
    assert acct.status("bob", "hospital").spent_epsilon <= 1.0


def test_zcdp_budget_with_zero_delta_says_delta_must_be_positive(make_ledger):
    acct = _accountant(make_ledger, measure="zcdp", budget=Budget(1.0, 0.0))
    with pytest.raises(BudgetExhausted, match=r"delta must be > 0"):
        acct.charge("bob", "hospital", PrivacyCost("zcdp", 0.1, rho=1e-4))
    assert acct.status("bob", "hospital").total_rho == 0.0


def test_cost_validation(make_ledger):
    acct = _accountant(make_ledger)
    with pytest.raises(InvalidParameter, match="pure DP"):
        acct.charge("bob", "hospital", PrivacyCost("zcdp", 0.1, rho=0.001))
    with pytest.raises(InvalidParameter):
        acct.charge("bob", "hospital", PrivacyCost("pure", math.nan))
    with pytest.raises(InvalidParameter):
        acct.register_dataset("x", "renyi", Budget(1.0))
    with pytest.raises(InvalidParameter):
        acct.set_budget("bob", "hospital", Budget(1.0, 1.5), set_by="o")
    assert acct.history() == []
    # a pure cost on a zcdp dataset counts as epsilon^2/2
    acct.register_dataset("gauss", "zcdp", Budget(1.0, 1e-6))
    acct.charge("bob", "gauss", PrivacyCost("pure", 0.1))
    assert acct.status("bob", "gauss").spent_rho == pytest.approx(0.005)


def test_free_cost_is_always_admitted(make_ledger):
    acct = _accountant(make_ledger, budget=Budget(0.1))
    acct.charge("bob", "hospital", PrivacyCost("pure", 0.1))
    acct.check("bob", "hospital", PrivacyCost("pure"))
    acct.charge("bob", "hospital", PrivacyCost("pure"))
    assert acct.status("bob", "hospital").queries == 2


def test_sqlite_ledger_refuses_memory_and_charges_are_append_only(tmp_path):
    with pytest.raises(ValueError):
        SqliteLedger(":memory:")
    ledger = SqliteLedger(tmp_path / "l.db")
    acct = Accountant(ledger)
    acct.register_dataset("hospital", "pure", Budget(1.0))
    acct.charge("bob", "hospital", PrivacyCost("pure", 0.5))
    conn = sqlite3.connect(ledger.path)
    for statement in ("UPDATE charges SET epsilon = 0", "DELETE FROM charges"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute(statement)
    conn.close()
    assert conn and acct.status("bob", "hospital").spent_epsilon == 0.5
    SqliteLedger(tmp_path / "l.db")  # schema creation is idempotent
    assert acct.status("bob", "hospital").spent_epsilon == 0.5
