"""Fuzzing the HTTP API of a real `sqlgate serve` process.

Hypothesis sends random and mutated JSON bodies, raw bytes with random content types, random
credentials and random paths; schemathesis generates requests for every operation of
/v1/openapi.json (as an analyst and as an owner). The server must never answer 5xx, every
error must have the documented JSON shape, no response may carry a planted value, the
server process stays up, an independent client (the bystander) keeps getting answers, and
the server's resident memory stays bounded.
"""
from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests._require import require_module
from tests.security.live import LiveServer, prepare_home
from tests.security.sentinel import leaked_needles

EXAMPLES = 20
MEMORY_GROWTH_LIMIT = 300 * 1024 * 1024
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


class Domain:
    def __init__(self, server: LiveServer, analysts, owner_token: str):
        self.server = server
        self.fuzzer = httpx.Client(base_url=server.url, timeout=60, headers={
            "Authorization": f"Bearer {analysts['fuzzer'].token}"})
        self.bystander = httpx.Client(base_url=server.url, timeout=60, headers={
            "Authorization": f"Bearer {analysts['bystander'].token}"})
        self.analyst_token = analysts["fuzzer"].token
        self.owner_token = owner_token
        self.checks = 0
        self.rss_start = server.rss_bytes()

    def healthy(self) -> None:
        assert self.server.alive(), "the server died:\n" + "".join(self.server.output[-40:])
        self.checks += 1
        response = self.bystander.post("/v1/query", json={
            "sql": f"SELECT COUNT(*) FROM people WHERE age > {self.checks % 90} "
                   f"AND salary > {self.checks}", "epsilon": 0.01})
        assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def domain(tmp_path_factory):
    from server.auth import UserStore
    home = tmp_path_factory.mktemp("fuzz-http") / "home"
    analysts = prepare_home(home, {"fuzzer": 1000.0, "bystander": 1000.0})
    users = UserStore(home / "users.sqlite")
    users.create_user("olga", "owner")
    users.grant("olga", "scratch", "own")  # owns nothing that exists: cannot drop `hr`
    server = LiveServer.start(home)
    try:
        d = Domain(server, analysts, users.issue_token("olga"))
        yield d
        d.healthy()
        growth = server.rss_bytes() - d.rss_start
        assert growth < MEMORY_GROWTH_LIMIT, f"server RSS grew by {growth >> 20} MB"
        d.fuzzer.close()
        d.bystander.close()
    finally:
        server.stop()


def check_response(response: httpx.Response, sent: str = "") -> None:
    assert response.status_code < 500, f"{response.status_code}: {response.text[:300]}"
    leaked = [n for n in leaked_needles(response.text) if n not in sent]
    assert not leaked, f"planted value(s) {leaked} in a response: {response.text[:300]}"
    if response.status_code >= 400 and response.headers.get("content-type", "").startswith(
            "application/json"):
        error = response.json()["error"]
        assert {"code", "message", "sqlstate"} <= set(error), error
        assert isinstance(error["message"], str) and len(error["sqlstate"]) == 5


SQL = st.sampled_from([
    "SELECT COUNT(*) FROM people", "SELECT * FROM people", "SELECT name FROM people",
    "SELECT AVG(salary) FROM people WHERE name = 'ZZSECRET42'", "COPY people TO '/tmp/x'",
    "SELECT COUNT(*) FROM people; DROP TABLE people", "SELECT dept, COUNT(*) FROM visits GROUP BY dept",
    "SELECT COUNT(*) FROM read_csv('/etc/passwd')", "", "SELECT",
]) | st.text(max_size=200)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
JSON = st.recursive(SCALARS, lambda children: st.lists(children, max_size=4)
                    | st.dictionaries(st.text(max_size=10), children, max_size=4), max_leaves=15)
FIELDS = st.fixed_dictionaries({}, optional={
    "sql": SQL | JSON, "epsilon": st.floats() | st.integers() | JSON,
    "format": st.sampled_from(["json", "csv", "arrow", "xml", ""]) | JSON,
    "dataset": st.sampled_from(["hr", "vault", ""]) | JSON,
    "kind": st.sampled_from(["exact", "sample", "training", "nope"]) | JSON,
    "purpose": st.text(max_size=50), "spec": JSON})
ENDPOINTS = st.sampled_from(["/v1/query", "/v1/explain", "/v1/describe", "/v1/requests"])


def _encode(body) -> bytes:
    return json.dumps(body, allow_nan=True).encode()


@FUZZ
@given(path=ENDPOINTS, body=FIELDS | JSON)
def test_random_json_bodies(domain, path, body):
    data = _encode(body)
    response = domain.fuzzer.post(path, content=data,
                                  headers={"Content-Type": "application/json"})
    check_response(response, data.decode())
    if path == "/v1/query" and response.status_code == 200 and \
            response.headers.get("content-type", "").startswith("application/json"):
        for row in response.json()["rows"]:
            assert not any(leaked_needles(str(v)) for v in row)
    domain.healthy()


@st.composite
def mutated_bodies(draw):
    """A valid query body, then bytes flipped, cut, duplicated or spliced."""
    data = bytearray(_encode({"sql": draw(SQL), "epsilon": 0.1}))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "cut", "insert", "dup"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if action == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "cut":
            del data[at:]
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=20))
        else:
            data += data[at:]
    return bytes(data)


@FUZZ
@given(path=ENDPOINTS, data=mutated_bodies() | st.binary(max_size=2000),
       content_type=st.sampled_from(["application/json", "text/plain", "",
                                     "application/x-www-form-urlencoded", "multipart/form-data",
                                     "application/json; charset=latin-1"]))
def test_mutated_and_binary_bodies(domain, path, data, content_type):
    response = domain.fuzzer.post(path, content=data, headers={"Content-Type": content_type})
    check_response(response, data.decode("utf-8", "replace"))
    domain.healthy()


@FUZZ
@given(authorization=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80)
       | st.sampled_from(["Bearer", "Bearer sqg_", "Basic Og==", "Basic " + "A" * 400]),
       method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
       path=st.sampled_from(["/v1/query", "/v1/datasets", "/v1/budgets", "/v1/users",
                             "/v1/audit", "/v1/me", "/v1/requests"])
       | st.lists(st.text(st.characters(min_codepoint=33, max_codepoint=126,
                                        exclude_characters="?#/"), min_size=1, max_size=12),
                  min_size=1, max_size=4).map(lambda parts: "/v1/" + "/".join(parts)))
def test_random_credentials_paths_and_methods(domain, authorization, method, path):
    authorization = authorization.strip()  # h11 refuses edge whitespace on the client side
    response = httpx.request(method, domain.server.url + path, timeout=60,
                             headers={"Authorization": authorization} if authorization else {},
                             json={"sql": "SELECT COUNT(*) FROM people"})
    check_response(response)
    if response.status_code == 200:
        assert path in ("/v1/health", "/v1/openapi.json") or authorization.startswith(
            ("Bearer sqg_", "Basic ")), "an answer without credentials"
    domain.healthy()


def test_oversize_body_is_refused_with_413(domain):
    big = b'{"sql": "' + b"x" * (2 << 20) + b'"}'
    response = domain.fuzzer.post("/v1/query", content=big,
                                  headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    streamed = domain.fuzzer.post("/v1/query", content=iter([b'{"sql":"' + b"y" * 65536] * 64),
                                  headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413
    domain.healthy()


def test_deeply_nested_json_is_a_client_error(domain):
    try:
        response = domain.fuzzer.post("/v1/query", content=b"[" * 100_000 + b"]" * 100_000,
                                      headers={"Content-Type": "application/json"})
        assert response.status_code == 400, response.text
    finally:
        domain.healthy()


# ---------------------------------------------------------------- schemathesis

try:
    import schemathesis
except ImportError:  # installed by .ci/install-security.sh
    schemathesis = None

if schemathesis is not None:
    @pytest.fixture(scope="module")
    def api_schema(domain):
        return schemathesis.openapi.from_url(domain.server.url + "/v1/openapi.json")

    schema = schemathesis.pytest.from_fixture("api_schema")
    SCHEMATHESIS = settings(max_examples=2, deadline=None, derandomize=True, database=None,
                            suppress_health_check=list(HealthCheck))
    SCHEMATHESIS_LONG = settings(SCHEMATHESIS, max_examples=30)

    def _call(case, token: str, domain) -> None:
        response = case.call(headers={"Authorization": f"Bearer {token}"})
        assert response.status_code < 500, f"{case.method} {case.path}: {response.text[:300]}"
        assert not leaked_needles(response.text)
        assert domain.server.alive()

    @schema.parametrize()
    @SCHEMATHESIS
    def test_openapi_operations_as_analyst(case, domain):
        _call(case, domain.analyst_token, domain)

    @pytest.mark.slow
    @schema.parametrize()
    @SCHEMATHESIS_LONG
    def test_openapi_operations_as_owner(case, domain):
        _call(case, domain.owner_token, domain)

    @pytest.mark.slow
    @schema.parametrize()
    @SCHEMATHESIS_LONG
    def test_openapi_operations_as_analyst_long(case, domain):
        _call(case, domain.analyst_token, domain)

    def test_bystander_after_schemathesis(domain):
        domain.healthy()
else:
    def test_schemathesis_is_installed():
        require_module("schemathesis")
