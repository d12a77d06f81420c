"""Budget races and repeated queries, through the front-end service.

* Many threads of one analyst (and of many analysts) race for a budget that admits exactly
  N queries: exactly N are answered, whatever the interleaving, the ledger and the audit log
  agree, nothing is overspent.
* Repeats cannot average the noise away: every distinct noisy answer was charged.
* A query refused for budget never touches the data; explain/describe never execute.
* A failure after the charge does not refund (privacy rule 4).
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from server.audit import AuditLog
from server.auth import UserStore
from server.service import Caller, GatewayService
from sqlgate.errors import BudgetExhausted, TooManyRequests, UnsupportedQuery
from sqlgate.metadata import Budget
from tests.security.sentinel import assert_error_is_clean, build_gateway


@pytest.fixture
def domain(tmp_path):
    gw = build_gateway()
    users = UserStore(tmp_path / "users.sqlite")
    service = GatewayService(gw, users, AuditLog.in_home(tmp_path), max_concurrent_per_user=4)
    yield gw, service
    gw.close()


def _analyst(service, name: str, epsilon: float) -> Caller:
    service.users.create_user(name, "analyst")
    service.users.grant(name, "hr", "query")
    service.gateway.set_budget(name, "hr", Budget(epsilon, 0.0), set_by="test")
    return Caller(service.users.user(name), "http", "127.0.0.1:1")


def _ask(service, caller, i: int) -> str:
    try:
        service.query(caller, f"SELECT COUNT(*) FROM people WHERE age > {i}", epsilon=0.1)
        return "ok"
    except BudgetExhausted as err:
        assert_error_is_clean(err)
        return "budget"
    except TooManyRequests:
        return "busy"


def _until_settled(service, caller, count: int, threads: int) -> list[str]:
    """Send `count` distinct queries from `threads` threads; retry the ones refused as busy
    (the per-user concurrency limit) until each is answered or refused for budget."""
    pending = list(range(count))
    final: list[str] = []
    while pending:
        with ThreadPoolExecutor(threads) as pool:
            outcomes = list(pool.map(lambda i: (i, _ask(service, caller, i)), pending))
        final += [o for _, o in outcomes if o != "busy"]
        pending = [i for i, o in outcomes if o == "busy"]
    return final


def test_one_analyst_racing_gets_exactly_the_budget(domain):
    gw, service = domain
    racer = _analyst(service, "racer", 1.0)  # admits exactly 10 queries of 0.1
    outcomes = _until_settled(service, racer, 40, threads=16)
    assert outcomes.count("ok") == 10 and outcomes.count("budget") == 30
    status = gw.budget("racer", "hr")
    assert status.queries == 10 and status.spent_epsilon == pytest.approx(1.0)
    assert status.remaining_epsilon >= -1e-12
    answered = service.audit.records(actor="racer", decision="ok", limit=1000)
    assert len(answered) == 10 and all(r["epsilon"] == pytest.approx(0.1) for r in answered)
    assert len(gw.accountant.history(analyst="racer", dataset="hr")) == 10
    assert service.audit.verify().ok


def test_many_analysts_racing_each_get_exactly_their_budget(domain):
    gw, service = domain
    callers = [_analyst(service, f"a{i}", 0.3) for i in range(8)]  # 3 queries each
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda c: _until_settled(service, c, 8, threads=4), callers))
    for caller, outcomes in zip(callers, results):
        assert outcomes.count("ok") == 3, caller.name
        assert gw.budget(caller.name, "hr").spent_epsilon == pytest.approx(0.3)


def test_repeats_never_give_free_fresh_noise(domain):
    gw, service = domain
    caller = _analyst(service, "averager", 100.0)
    sql = "SELECT SUM(salary) FROM people WHERE name = 'ZZSECRET42'"
    # Identical queries at the same instant: each fresh draw must have been charged.
    service.limiter.limit = 64
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: service.query(caller, sql, epsilon=0.5).rows[0][0],
                                range(12)))
    charges = gw.budget("averager", "hr").queries
    assert 1 <= len(set(answers)) <= charges
    # Afterwards every repeat is the remembered answer, for free.
    again = {service.query(caller, sql, epsilon=0.5).rows[0][0] for _ in range(5)}
    assert len(again) == 1 and again <= set(answers)
    assert gw.budget("averager", "hr").queries == charges
    # Rewordings are either recognised as the same query or charged as a new one.
    variants = [sql.lower(), sql.replace(" ", "  "), sql + " -- again", sql + ";",
                sql.replace("FROM people", "FROM hr.people"),
                sql.replace("SUM(salary)", "SUM(salary) AS s"),
                sql + " AND 1 = 1"]
    seen = set(answers)
    for variant in variants:
        before = gw.budget("averager", "hr").queries
        result = service.query(caller, variant, epsilon=0.5)
        fresh = result.rows[0][0] not in seen
        charged = gw.budget("averager", "hr").queries - before
        assert charged == (0 if result.cached else 1)
        assert not fresh or charged == 1, f"fresh noise without a charge: {variant}"
        seen.add(result.rows[0][0])


class _CountingRuns:
    """Counts executions on the private engine."""

    def __init__(self, executor):
        self.calls = 0
        self._run = executor.run
        executor.run = self

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self._run(*args, **kwargs)


def test_over_budget_and_explain_never_touch_data(domain):
    gw, service = domain
    caller = _analyst(service, "poor", 0.2)
    runs = _CountingRuns(gw.executor)
    sql = "SELECT region, AVG(salary), MEDIAN(age) FROM people GROUP BY region"
    for _ in range(3):
        service.explain(caller, sql, epsilon=5.0)
        service.describe(caller, sql)
    assert runs.calls == 0 and gw.budget("poor", "hr").queries == 0
    with pytest.raises(BudgetExhausted) as raised:
        service.query(caller, sql, epsilon=5.0)
    assert runs.calls == 0
    assert "remaining_epsilon" in raised.value.details
    assert_error_is_clean(raised.value, sql)
    service.query(caller, sql, epsilon=0.2)
    assert runs.calls > 0


def test_failure_after_the_charge_is_not_refunded(domain):
    gw, service = domain
    caller = _analyst(service, "unlucky", 5.0)
    # Passes planning (no data), then fails in post-processing on the noisy count (> 127).
    sql = "SELECT CAST(COUNT(*) AS TINYINT) FROM people"
    with pytest.raises(UnsupportedQuery) as raised:
        service.query(caller, sql, epsilon=1.0)
    assert_error_is_clean(raised.value, sql)
    assert gw.budget("unlucky", "hr").spent_epsilon == pytest.approx(1.0)
    [record] = service.audit.records(actor="unlucky")
    assert record["decision"] == "refused" and record["code"] == "unsupported"


def test_cancel_from_another_thread_spends_nothing_or_everything(domain):
    """A cancel racing the query either stops it before the charge (nothing spent) or comes
    too late (charged and answered); never charged without an answer being possible."""
    gw, service = domain
    caller = _analyst(service, "canceller", 10.0)
    for i in range(10):
        cancel = threading.Event()
        timer = threading.Timer(0.001 * i, cancel.set)
        timer.start()
        before = gw.budget("canceller", "hr").queries
        try:
            service.query(caller, f"SELECT COUNT(*) FROM visits WHERE cost > {i}",
                          epsilon=0.1, cancel=cancel)
            assert gw.budget("canceller", "hr").queries == before + 1
        except Exception as err:  # noqa: BLE001 - only the cancel error is acceptable
            assert type(err).__name__ == "QueryCanceled", err
            assert gw.budget("canceller", "hr").queries == before
        timer.join()
