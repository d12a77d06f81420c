"""Three domain gateways and a router on loopback: answers, what the router sees, front ends."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from server import secure_sum
from server.audit import AuditLog
from server.auth import UserStore
from server.router.partials import federated_plan
from server.router.protocol import partial_vector
from server.service import Caller, GatewayService
from sqlgate.errors import UndefinedTable, UnsupportedQuery
from sqlgate.gateway import Gateway
from tests.router.conftest import DOMAINS, NOISE_DOMAIN, clinic_metadata

GROUPED = "SELECT ward, COUNT(*) AS n, SUM(age) AS s, AVG(los) AS l FROM visits GROUP BY ward"


@pytest.fixture(scope="module")
def pooled(federation):
    """One gateway over the union of the domains' rows: the truth federation must match."""
    gateway = Gateway()
    gateway.add_dataset(clinic_metadata(), {"visits": federation.pooled})
    yield gateway
    gateway.close()


def true_partials(federation, sql: str, epsilon: float) -> dict[str, list[int]]:
    """Each domain's un-noised partial vector, computed inside the domain (test-side only)."""
    router = federation.routers[0] if federation.routers else federation.router()
    out = {}
    for name in DOMAINS:
        gateway = federation.gateways[name]
        fplan = federated_plan(gateway, sql, epsilon, router.federation)
        out[name] = partial_vector(fplan, gateway.executor.run(fplan.plan.bounded_sql).rows)
    return out


def test_federated_answer_matches_pooled_truth(federation, pooled):
    router = federation.router()
    result = router.query(GROUPED, analyst="truth", epsilon=90)
    exact = {row[0]: row for row in pooled.executor.run(_bounded(pooled, GROUPED)).rows}
    reference = {row[0]: row for row in pooled.query(GROUPED, analyst="truth", epsilon=90).rows}
    assert [c.name for c in result.columns] == ["ward", "n", "s", "l"]
    assert sorted(row[0] for row in result.rows) == sorted(exact)
    ci = {c.name: c.ci95 for c in result.columns}
    for ward, n, s, mean_los in result.rows:
        assert abs(n - exact[ward][1]) <= 5 * ci["n"]
        # The rewriter's sum measure is fixed-point; compare the released values instead.
        _, n_ref, s_ref, l_ref = reference[ward]
        assert abs(s - s_ref) <= 10 * ci["s"]
        assert abs(mean_los - l_ref) <= 10 * ci["l"]
    # The total really spans all three domains (each alone holds far fewer rows).
    total = sum(row[1] for row in result.rows)
    assert total > 1.5 * max(len(frame) for frame in federation.frames.values())
    assert result.cost.epsilon == 90 and result.dataset == "clinic"


def _bounded(gateway: Gateway, sql: str) -> str:
    from rewriter import plan_query
    plan = plan_query(sql, gateway.catalog.resolve_table)
    # COUNT is the first measure: exact bounded counts per ward.
    return f"SELECT k0, m0 FROM ({plan.bounded_sql}) AS t"


def test_noise_is_added_once_and_is_real(federation, pooled):
    router = federation.router()
    sql = "SELECT ward, COUNT(*) AS n FROM visits GROUP BY ward"
    exact = dict(pooled.executor.run(_bounded(pooled, sql)).rows)
    differing = 0
    for _ in range(2):
        result = router.query(sql, analyst="noise-check", epsilon=0.5)
        differing += sum(1 for ward, n in result.rows if n != exact[ward])
        assert all(abs(n - exact[ward]) <= 5 * result.columns[1].ci95 for ward, n in result.rows)
    assert differing > 0
    # The ci95 is the single-noise one (noise added once, not once per domain).
    assert result.columns[1].ci95 == pytest.approx(pooled.explain(
        sql, analyst="x", epsilon=0.5).columns[1].ci95)


def test_router_only_receives_masked_shares(federation):
    messages = []
    router = federation.router(observer=lambda phase, domain, body: messages.append(
        (phase, domain, dict(body))))
    sql = "SELECT ward, sex, COUNT(*) AS n, SUM(age) AS s FROM visits GROUP BY ward, sex"
    epsilon = 50.0
    words = []
    totals = []
    for _ in range(3):
        messages.clear()
        router.query(sql, analyst="observer", epsilon=epsilon)
        partials = true_partials(federation, sql, epsilon)
        shares = {}
        for phase, domain, body in messages:
            if phase != "share":
                # Metadata and prepare answers carry no values at all.
                assert "share" not in body and "vector" not in body
                if phase == "prepare":
                    assert set(body) == {"domain", "fingerprint", "length", "cost"}
                continue
            assert set(body) == {"domain", "fingerprint", "length", "share", "cost"}
            shares[domain] = secure_sum.from_wire(body["share"], body["length"])
        assert sorted(shares) == sorted(DOMAINS)
        for domain, share in shares.items():
            clear = secure_sum.encode_signed(partials[domain])
            # Not one coordinate of any share equals the domain's partial in the clear.
            assert not np.any(share == clear), domain
            words.extend(int(w) for w in share)
        # No proper subset of shares reveals the matching sum of partials either.
        for left_out in DOMAINS:
            subset = [d for d in DOMAINS if d != left_out]
            masked = np.zeros(len(shares["a"]), dtype=np.uint64)
            with np.errstate(over="ignore"):
                for d in subset:
                    masked += shares[d]
            clear_sum = np.array([sum(partials[d][i] for d in subset)
                                  for i in range(len(masked))])
            diff = np.array(secure_sum.decode_signed(masked)) - clear_sum
            assert np.all(np.abs(diff.astype(float)) > 1e9), left_out
        # All shares together: the partials' total plus the (small) noise.
        total = np.zeros(len(shares["a"]), dtype=np.uint64)
        with np.errstate(over="ignore"):
            for share in shares.values():
                total += share
        clear_total = np.array([sum(partials[d][i] for d in DOMAINS) for i in range(len(total))])
        totals.append(np.array(secure_sum.decode_signed(total)) - clear_total)
    assert np.all(np.abs(np.concatenate(totals)) < 10_000)
    # The shares the router saw are indistinguishable from uniform words of Z_2^64.
    uniform = np.array(words, dtype=float) / float(secure_sum.RING)
    assert len(uniform) >= 3 * 3 * 16
    assert stats.kstest(uniform, "uniform").pvalue > 1e-4
    high_bit = np.mean(uniform >= 0.5)
    assert 0.3 < high_bit < 0.7  # plain small partials would all be ~0 or ~1


def test_router_holds_no_pair_key(federation, tmp_path):
    paths = federation.files.write(tmp_path)
    router_text = paths["router"].read_text()
    assert "pair_keys" not in router_text
    for name in DOMAINS:
        for key in federation.files.domains[name]["pair_keys"].values():
            assert key not in router_text
    config = federation.router_config()
    assert not hasattr(config, "pair_keys")
    # Each pair key is held by exactly its two domains.
    for a in DOMAINS:
        for b in DOMAINS:
            if a < b:
                assert federation.files.domains[a]["pair_keys"][b] == \
                    federation.files.domains[b]["pair_keys"][a]


def test_describe_and_explain_spend_nothing(federation):
    router = federation.router()
    before = {d: federation.gateways[d].budget("describer", "clinic").queries for d in DOMAINS}
    columns = router.describe(GROUPED)
    assert [c.name for c in columns] == ["ward", "n", "s", "l"]
    explanation = router.explain(GROUPED, analyst="describer", epsilon=2)
    assert explanation.cost.epsilon == 2 and explanation.key_release == "public"
    assert NOISE_DOMAIN in " ".join(explanation.notes)
    after = {d: federation.gateways[d].budget("describer", "clinic").queries for d in DOMAINS}
    assert before == after


def test_every_domain_charges_its_own_ledger(federation):
    router = federation.router()
    router.query("SELECT COUNT(*) FROM visits", analyst="ledger", epsilon=3)
    for name in DOMAINS:
        status = federation.gateways[name].budget("ledger", "clinic")
        assert status.queries == 1 and status.spent_epsilon == pytest.approx(3)
    budget = router.budget("ledger", "clinic")
    assert budget.remaining_epsilon == pytest.approx(997)
    assert sorted(budget.to_dict()["domains"]) == sorted(DOMAINS)
    # A repeat is a new federated run: charged again (the router caches nothing).
    router.query("SELECT COUNT(*) FROM visits", analyst="ledger", epsilon=3)
    assert federation.gateways["a"].budget("ledger", "clinic").queries == 2


def test_threshold_keys_and_quantiles_are_refused_before_any_charge(federation):
    router = federation.router()
    for sql in ("SELECT city, COUNT(*) FROM visits GROUP BY city",
                "SELECT MEDIAN(age) FROM visits"):
        with pytest.raises(UnsupportedQuery):
            router.query(sql, analyst="refused", epsilon=1)
    assert all(federation.gateways[d].budget("refused", "clinic").queries == 0 for d in DOMAINS)


def test_scope_hides_datasets_like_missing_tables(federation):
    router = federation.router()
    with pytest.raises(UndefinedTable):
        router.query("SELECT COUNT(*) FROM visits", analyst="scoped", scope=["other"])
    with pytest.raises(UndefinedTable):
        router.describe("SELECT COUNT(*) FROM clinic.visits", scope=[])
    assert router.describe("SELECT COUNT(*) AS n FROM visits", scope=["clinic"])[0].name == "n"


def test_gateway_service_serves_the_router(federation, tmp_path):
    """The HTTP and PG wire front ends call GatewayService(gateway, ...): the router fits."""
    router = federation.router()
    users = UserStore(tmp_path / "users.sqlite")
    users.create_user("ana", "analyst")
    users.create_user("ned", "analyst")
    users.grant("ana", "clinic", "query")
    audit = AuditLog.in_home(tmp_path)
    service = GatewayService(router, users, audit)
    ana = Caller(users.user("ana"), "http", "127.0.0.1:1")
    ned = Caller(users.user("ned"), "http", "127.0.0.1:2")
    assert [m.name for m in service.datasets(ana)] == ["clinic"]
    result = service.query(ana, "SELECT sex, COUNT(*) AS n FROM visits GROUP BY sex", epsilon=5)
    assert sorted(row[0] for row in result.rows) == ["F", "M"]
    assert service.datasets(ned) == []
    with pytest.raises(UndefinedTable):
        service.query(ned, "SELECT COUNT(*) FROM visits", epsilon=5)
    assert federation.gateways["c"].budget("ned", "clinic").queries == 0
    assert audit.verify().ok
