"""A domain that is down, over budget or disagreeing fails the query cleanly: nothing is
released. What each domain is charged is explicit:

* failures in round 1 (prepare: plan + budget pre-check) leave every ledger untouched;
* in round 2 (share) each domain charges its own ledger before it sends its masked share
  (charge before release). If another domain fails in that round, the domains that already
  charged stay charged (no refunds, privacy rule 4) and the error names them
  (`details.charged_domains`), and the router releases nothing because the masks cannot
  cancel without every share.
"""
from __future__ import annotations

import pytest

from server.router.errors import FederationFailed, FederationMismatch
from sqlgate.errors import BudgetExhausted
from sqlgate.metadata import Budget
from tests.router.conftest import DOMAINS
from tests.router.servers import BackgroundServer, free_port
from server.router.http import domain_app

SQL = "SELECT ward, COUNT(*) AS n FROM visits GROUP BY ward"


def charges(federation, analyst: str) -> dict[str, int]:
    return {d: federation.gateways[d].budget(analyst, "clinic").queries for d in DOMAINS}


def test_domain_down_before_the_query_fails_cleanly(federation):
    dead = f"http://127.0.0.1:{free_port()}"
    router = federation.router(c=dead)
    with pytest.raises(FederationFailed) as info:
        router.query(SQL, analyst="down", epsilon=1)
    assert "'c'" in info.value.message and info.value.details["failed_domains"] == ["c"]
    assert charges(federation, "down") == {"a": 0, "b": 0, "c": 0}


def test_domain_going_down_after_metadata_fails_before_any_charge(federation):
    extra = BackgroundServer(domain_app(federation.services["c"])).start()
    router = federation.router(c=extra.url)
    try:
        router.datasets()  # metadata cached while c is up
    finally:
        extra.stop()
    with pytest.raises(FederationFailed) as info:
        router.query(SQL, analyst="went-down", epsilon=1)
    assert info.value.details["failed_domains"] == ["c"]
    assert "no domain was charged" in (info.value.hint or "")
    assert charges(federation, "went-down") == {"a": 0, "b": 0, "c": 0}


def test_domain_over_budget_refuses_in_prepare_nothing_charged(federation):
    federation.gateways["a"].set_budget("poor", "clinic", Budget(0.5, 0.0), set_by="owner-a")
    router = federation.router()
    with pytest.raises(BudgetExhausted) as info:
        router.query(SQL, analyst="poor", epsilon=1)
    assert info.value.details["domain"] == "a"
    assert info.value.details["failed_domains"] == ["a"]
    assert charges(federation, "poor") == {"a": 0, "b": 0, "c": 0}
    # Within every domain's budget it works, and each charges once.
    result = router.query(SQL, analyst="poor", epsilon=0.25)
    assert len(result.rows) == 4
    assert charges(federation, "poor") == {"a": 1, "b": 1, "c": 1}


def test_budget_spent_between_rounds_charged_domains_stay_charged(federation):
    """Domain c's budget disappears after it prepared: a and b have charged by then."""
    def observer(phase, domain, body):
        if phase == "prepare" and domain == "c":
            federation.gateways["c"].set_budget("racer", "clinic", Budget(0.1, 0.0),
                                                set_by="owner-c")
    router = federation.router(observer=observer)
    with pytest.raises(BudgetExhausted) as info:
        router.query(SQL, analyst="racer", epsilon=1)
    details = info.value.details
    assert details["failed_domains"] == ["c"]
    assert details["charged_domains"] == ["a", "b"]
    assert "stay charged" in info.value.hint
    # Charge before release, no refunds: a and b keep the charge, c was never charged.
    assert charges(federation, "racer") == {"a": 1, "b": 1, "c": 0}
    for d in ("a", "b"):
        assert federation.gateways[d].budget("racer", "clinic").spent_epsilon == pytest.approx(1)


def test_mismatched_domain_metadata_fails_without_charges(federation, tmp_path):
    """A domain whose schema differs is not federated; a forged plan is refused by domains."""
    from server.router.client import DomainClient
    from server.router.config import DomainEndpoint
    router = federation.router()
    fplan = router._plan(SQL, 1.0)
    endpoint = federation.router_config().domains["a"]
    client = DomainClient(DomainEndpoint("a", federation.servers["a"].url, endpoint.token))
    try:
        body = {"sql": SQL, "analyst": "forger", "epsilon": 2.0,  # not what was fingerprinted
                "fingerprint": fplan.fingerprint, "federation": router.federation.to_dict()}
        with pytest.raises(FederationMismatch):
            client.post("/prepare", body)
        other = dict(router.federation.to_dict(), noise_domain="a")
        with pytest.raises(FederationMismatch):
            client.post("/share", dict(body, epsilon=1.0, federation=other,
                                       nonce="1700000000." + "0" * 32))
    finally:
        client.close()
    assert charges(federation, "forger") == {"a": 0, "b": 0, "c": 0}
