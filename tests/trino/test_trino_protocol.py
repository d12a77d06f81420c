"""The Trino wire protocol itself: JSON shapes, nextUri paging, ownership, cancel."""
from __future__ import annotations

import threading
import time
import warnings

import httpx
import pytest
from starlette.applications import Starlette

warnings.filterwarnings("ignore", message=".*httpx.*starlette.testclient.*")
from starlette.testclient import TestClient  # noqa: E402

from server.trino import TrinoOptions, routes  # noqa: E402
from sqlgate.errors import QueryCanceled  # noqa: E402


def headers(live, user="ann", **extra):
    return {"Authorization": f"Bearer {live.tokens[user]}", "X-Trino-User": user,
            "X-Trino-Catalog": "sqlgate", "X-Trino-Schema": "hospital", **extra}


def post(live, sql, user="ann", **extra):
    response = httpx.post(f"{live.url}/v1/statement", content=sql.encode(),
                          headers=headers(live, user, **extra), timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def follow(live, body, user="ann"):
    """All documents of a statement, following nextUri to the end."""
    documents = [body]
    while "nextUri" in documents[-1]:
        response = httpx.get(documents[-1]["nextUri"], headers=headers(live, user), timeout=30)
        assert response.status_code == 200, response.text
        documents.append(response.json())
    return documents


def test_query_results_shape_and_paging(live):
    first = post(live, "SELECT sex, COUNT(*) AS n FROM patients WHERE age > 20 GROUP BY sex "
                       "ORDER BY sex")
    assert first["stats"]["state"] in ("QUEUED", "RUNNING")
    assert first["id"] and first["infoUri"].startswith(live.url)
    assert first["nextUri"].startswith(f"{live.url}/v1/statement/executing/{first['id']}/")
    documents = follow(live, first)
    final = documents[-1]
    assert final["stats"]["state"] == "FINISHED" and "nextUri" not in final
    with_columns = [d for d in documents if "columns" in d]
    assert with_columns[0]["columns"] == [
        {"name": "sex", "type": "varchar",
         "typeSignature": {"rawType": "varchar",
                           "arguments": [{"kind": "LONG", "value": 2147483647}]}},
        {"name": "n", "type": "bigint", "typeSignature": {"rawType": "bigint", "arguments": []}}]
    rows = [row for d in documents for row in d.get("data", [])]
    assert [r[0] for r in rows] == ["f", "m"]
    # Counters that would describe the private data are never reported.
    assert all(d["stats"]["processedRows"] == 0 for d in documents)
    # The cost and accuracy travel as a Trino warning.
    assert any("differentially private" in w["message"] and "epsilon=0.5" in w["message"]
               for w in final["warnings"])


def test_pages_are_slices_of_one_answer(live):
    status = live.state.gateway.budget("ann", "hospital")
    first = post(live, "SELECT region, COUNT(*) AS n FROM patients WHERE age > 21 "
                       "GROUP BY region ORDER BY region")
    documents = follow(live, first)
    pages = [d for d in documents if d.get("data")]
    assert len(pages) == 2      # four regions, two rows per page
    # Fetching a page again (a client retry) returns the same slice: no new draw.
    for document, page in zip(documents, documents[1:]):
        again = httpx.get(document["nextUri"], headers=headers(live), timeout=30).json()
        assert again.get("data") == page.get("data")
    after = live.state.gateway.budget("ann", "hospital")
    assert after.queries == status.queries + 1


def test_only_the_submitter_can_fetch_or_cancel(live):
    first = post(live, "SELECT COUNT(*) FROM patients WHERE age > 22")
    for user in ("bob", "olga"):
        response = httpx.get(first["nextUri"], headers=headers(live, user), timeout=30)
        assert response.status_code == 404
        assert "COUNT" not in response.text
    # A wrong slug is the same as a missing query.
    forged = first["nextUri"].rsplit("/", 2)[0] + "/forged-slug/0"
    assert httpx.get(forged, headers=headers(live), timeout=30).status_code == 404
    # bob's DELETE does not cancel ann's statement.
    assert httpx.delete(first["nextUri"], headers=headers(live, "bob"), timeout=30).status_code \
        == 204
    documents = follow(live, first)
    assert documents[-1]["stats"]["state"] == "FINISHED"
    assert httpx.get(first["nextUri"], timeout=30).status_code == 401


def test_delete_cancels_and_forgets(live):
    first = post(live, "SELECT COUNT(*) FROM patients WHERE age > 23")
    response = httpx.delete(first["nextUri"], headers=headers(live), timeout=30)
    assert response.status_code == 204
    assert httpx.get(first["nextUri"], headers=headers(live), timeout=30).status_code == 404


def test_catalog_statements_answer_on_post_with_headers(live):
    body = post(live, "SET SESSION epsilon = 0.75")
    assert body["stats"]["state"] == "FINISHED" and body["updateType"] == "SET SESSION"
    response = httpx.post(f"{live.url}/v1/statement", content=b"USE sqlgate.hospital",
                          headers=headers(live), timeout=30)
    assert response.headers["X-Trino-Set-Schema"] == "hospital"
    assert response.headers["X-Trino-Set-Catalog"] == "sqlgate"
    response = httpx.post(f"{live.url}/v1/statement", content=b"PREPARE q1 FROM SELECT ?",
                          headers=headers(live), timeout=30)
    assert response.headers["X-Trino-Added-Prepare"] == "q1=SELECT+%3F"
    body = post(live, "EXECUTE q1 USING 42", **{"X-Trino-Prepared-Statement": "q1=SELECT+%3F"})
    assert body["data"] == [[42]]
    body = post(live, "SELECT nothing FROM")
    assert body["stats"]["state"] == "FAILED"
    assert body["error"]["errorName"] == "SYNTAX_ERROR"
    assert body["error"]["errorType"] == "USER_ERROR" and body["error"]["errorCode"] == 1
    assert body["error"]["failureInfo"]["type"] == "io.sqlgate.syntax_error"
    info = httpx.get(f"{live.url}/v1/info", timeout=30).json()
    assert info["coordinator"] is True and info["nodeVersion"]["version"]


def test_malformed_requests(live):
    response = httpx.post(f"{live.url}/v1/statement", content=b"SELECT 1",
                          headers={"Authorization": "Basic !!!"}, timeout=30)
    assert response.status_code == 401
    body = post(live, "SELECT 1", **{"X-Trino-Session": "epsilon"})
    assert body["error"]["errorName"] == "INVALID_SESSION_PROPERTY"
    response = httpx.post(f"{live.url}/v1/statement", content=b"\xff\xfe",
                          headers=headers(live), timeout=30)
    assert response.json()["stats"]["state"] == "FAILED"
    body = post(live, "")
    assert body["error"]["errorName"] == "SYNTAX_ERROR"
    body = post(live, "EXECUTE missing USING 1")
    assert body["error"]["errorName"] == "NOT_FOUND"


class _BlockingService:
    """The real service, except that queries block until cancelled (like a slow engine)."""

    def __init__(self, service):
        self._service = service
        self.users = service.users
        self.started = threading.Event()
        self.saw_cancel = threading.Event()

    def __getattr__(self, name):
        return getattr(self._service, name)

    def query(self, caller, sql, *, epsilon=None, cancel=None):
        self.started.set()
        if cancel is not None and cancel.wait(20):
            self.saw_cancel.set()
            raise QueryCanceled("canceled")
        raise AssertionError("the statement was not cancelled")


def test_delete_sets_the_cancel_event_of_a_running_query(live):
    blocking = _BlockingService(live.state.service)
    app = Starlette(routes=routes(blocking, TrinoOptions(wait_s=0.05, post_wait_s=0.05)))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        body = client.post("/v1/statement", content=b"SELECT COUNT(*) FROM patients",
                           headers=headers(live)).json()
        assert blocking.started.wait(20)
        page = client.get(body["nextUri"], headers=headers(live)).json()
        assert page["stats"]["state"] == "RUNNING" and page["nextUri"] == body["nextUri"]
        assert client.delete(body["nextUri"], headers=headers(live)).status_code == 204
        assert blocking.saw_cancel.wait(20)


def test_quick_answers_come_back_on_the_post(live):
    app = Starlette(routes=routes(live.state.service, TrinoOptions(post_wait_s=20)))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        body = client.post("/v1/statement", content=b"SELECT COUNT(*) AS n FROM patients "
                                                   b"WHERE age > 24", headers=headers(live)).json()
    assert body["stats"]["state"] == "FINISHED" and "nextUri" not in body
    assert body["columns"][0]["name"] == "n" and isinstance(body["data"][0][0], int)
    assert "epsilon=0.5" in body["warnings"][0]["message"]


def test_store_is_bounded(live):
    from server.trino.store import QueryStore
    from server.trino.errors import TrinoError
    store = QueryStore(max_queries=2, ttl_s=60)
    a = store.create("ann", "SELECT 1")
    store.create("ann", "SELECT 2")
    with pytest.raises(TrinoError):
        store.create("ann", "SELECT 3")    # both still running: nothing can be dropped
    a.finish([], [])
    store.create("ann", "SELECT 4")        # the finished one makes room
    assert len(store) == 2
    expiring = QueryStore(max_queries=5, ttl_s=0.01)
    query = expiring.create("ann", "SELECT 1")
    time.sleep(0.05)
    expiring.create("ann", "SELECT 2")
    assert query.cancel.is_set() and len(expiring) == 1


def test_oversized_statements_are_refused(live):
    body = post(live, "SELECT 1 -- " + "x" * (1 << 20))
    assert body["stats"]["state"] == "FAILED"
    assert body["error"]["errorName"] == "GENERIC_INSUFFICIENT_RESOURCES"
