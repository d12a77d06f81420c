"""Router-to-domain traffic is authenticated per peer, and a share request cannot be replayed."""
from __future__ import annotations

import time

import httpx
import pytest

from server.router.config import ConfigError, parse_domain_config
from server.router.domain import NonceRegistry
from sqlgate.errors import InvalidParameter, PermissionDenied
from tests.router.conftest import DOMAINS

SQL = "SELECT COUNT(*) AS n FROM visits"


def share_body(federation, analyst: str, nonce: str) -> dict:
    router = federation.router()
    fplan = router._plan(SQL, 1.0)
    return {"sql": SQL, "analyst": analyst, "epsilon": 1.0, "fingerprint": fplan.fingerprint,
            "federation": router.federation.to_dict(), "nonce": nonce}


def fresh_nonce(suffix: str) -> str:
    return f"{int(time.time())}.{suffix * 32}"[:11 + 32]


@pytest.mark.parametrize("header", [None, "Bearer wrong-token", "Basic abc", "Bearer"])
def test_domain_refuses_missing_or_wrong_tokens(federation, header):
    url = federation.servers["a"].url + "/federation/v1"
    headers = {"Authorization": header} if header else {}
    for method, path in (("GET", "/datasets"), ("POST", "/share"), ("POST", "/prepare")):
        response = httpx.request(method, url + path, headers=headers, json={}, timeout=10)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "authentication_failed"
    assert federation.gateways["a"].budget("anyone", "clinic").queries == 0


def test_each_domain_accepts_only_its_own_token(federation):
    tokens = {name: spec["token"] for name, spec in federation.files.router["domains"].items()}
    for name in DOMAINS:
        url = federation.servers[name].url + "/federation/v1/health"
        for other, token in tokens.items():
            response = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
            assert response.status_code == (200 if other == name else 401), (name, other)


def test_replayed_nonce_is_refused_and_not_charged_again(federation):
    token = federation.files.router["domains"]["a"]["token"]
    url = federation.servers["a"].url + "/federation/v1/share"
    headers = {"Authorization": f"Bearer {token}"}
    body = share_body(federation, "replay", fresh_nonce("a"))
    first = httpx.post(url, json=body, headers=headers, timeout=30)
    assert first.status_code == 200, first.text
    assert federation.gateways["a"].budget("replay", "clinic").queries == 1
    again = httpx.post(url, json=body, headers=headers, timeout=30)
    assert again.status_code == 403
    assert "already used" in again.json()["error"]["message"]
    assert federation.gateways["a"].budget("replay", "clinic").queries == 1


def test_stale_or_malformed_nonce_is_refused(federation):
    token = federation.files.router["domains"]["b"]["token"]
    url = federation.servers["b"].url + "/federation/v1/share"
    headers = {"Authorization": f"Bearer {token}"}
    stale = f"{int(time.time()) - 3600}.{'c' * 32}"
    for nonce in (stale, "not-a-nonce", None):
        response = httpx.post(url, json=share_body(federation, "stale", nonce), headers=headers,
                              timeout=30)
        assert response.status_code == 400, nonce
        assert response.json()["error"]["code"] == "invalid_parameter"
    assert federation.gateways["b"].budget("stale", "clinic").queries == 0


def test_nonce_registry_window():
    now = [1_800_000_000.0]
    registry = NonceRegistry(window_s=60, clock=lambda: now[0])
    nonce = f"{int(now[0])}.{'d' * 32}"
    registry.claim(nonce)
    with pytest.raises(PermissionDenied):
        registry.claim(nonce)
    now[0] += 61  # the same nonce is now outside the window: refused by its timestamp
    with pytest.raises(InvalidParameter):
        registry.claim(nonce)


def test_domain_config_refuses_missing_pair_keys_and_short_keys(federation):
    raw = dict(federation.files.domains["a"])
    keys = dict(raw["pair_keys"])
    keys.pop("b")
    with pytest.raises(ConfigError) as info:
        parse_domain_config(dict(raw, pair_keys=keys))
    assert "pair_keys" in str(info.value.message) or "pair_keys" in str(info.value)
    with pytest.raises(ConfigError):
        parse_domain_config(dict(raw, pair_keys=dict(raw["pair_keys"], b="00ff")))
    with pytest.raises(ConfigError):
        parse_domain_config(dict(raw, peers={}))


def test_domain_bodies_are_bounded_and_nesting_is_refused(federation):
    token = federation.files.router["domains"]["a"]["token"]
    url = federation.servers["a"].url + "/federation/v1/prepare"
    headers = {"Authorization": f"Bearer {token}", "content-type": "application/json"}
    deep = httpx.post(url, content=b"[" * 200_000 + b"]" * 200_000, headers=headers, timeout=30)
    assert deep.status_code == 400
    assert "nested too deeply" in deep.json()["error"]["message"]
    huge = httpx.post(url, content=b" " * (2 << 20), headers=headers, timeout=30)
    assert huge.status_code == 413
    assert huge.json()["error"]["code"] == "limit_exceeded"
