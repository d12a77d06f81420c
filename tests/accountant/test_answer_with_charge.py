"""The answer stored in the charge's own transaction, and the one-read lookup, on both
ledgers (SQLite file, throwaway PostgreSQL): one commit per query instead of two."""
import pytest

from accountant import Accountant, Budget, PrivacyCost
from sqlgate.errors import BudgetExhausted, Conflict, InvalidParameter


def _accountant(make_ledger) -> Accountant:
    acct = Accountant(make_ledger())
    acct.register_dataset("hospital", "pure", Budget(1.0, 1e-6))
    return acct


def test_charge_with_answer_is_one_atomic_step(make_ledger):
    acct = _accountant(make_ledger)
    cost = PrivacyCost("pure", 0.4)
    assert acct.cached_or_check("bob", "hospital", "k1", cost) is None
    first = acct.charge("bob", "hospital", cost, query_key="k1", answer=b"answer 1")
    assert acct.cached_answer("bob", "hospital", "k1") == b"answer 1"
    assert acct.cached_or_check("bob", "hospital", "k1", cost) == b"answer 1"
    assert acct.cached_or_check("alice", "hospital", "k1", cost) is None   # per analyst
    with pytest.raises(Conflict):
        acct.record_answer(first, b"again")                                # once per charge
    acct.charge("bob", "hospital", cost, query_key="k2", answer=b"answer 2")
    # 0.8 spent: a third 0.4 is refused by the pre-check and by the charge, which then
    # stores nothing at all
    with pytest.raises(BudgetExhausted):
        acct.cached_or_check("bob", "hospital", "k3", cost)
    with pytest.raises(BudgetExhausted):
        acct.charge("bob", "hospital", cost, query_key="k3", answer=b"never released")
    assert acct.cached_answer("bob", "hospital", "k3") is None
    assert len(acct.history("bob", "hospital")) == 2
    # a cached answer is still served when nothing more fits: it costs nothing
    assert acct.cached_or_check("bob", "hospital", "k2", cost) == b"answer 2"
    with pytest.raises(InvalidParameter):
        acct.charge("bob", "hospital", PrivacyCost("pure", 0.1), answer="not bytes")
    assert len(acct.history("bob", "hospital")) == 2
