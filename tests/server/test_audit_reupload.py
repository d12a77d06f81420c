"""Owners read a dataset's audit records only from the time they were granted `own` (review
finding: whoever re-uploaded a dropped dataset's name read the old dataset's history)."""
from __future__ import annotations

from tests.server.conftest import HOSPITAL_YAML, patients_frame

SQL = "SELECT region, COUNT(*) AS n FROM patients GROUP BY region"


def _audit(client, **params) -> list[dict]:
    response = client.get("/v1/audit", params={"limit": 10_000, **params})
    assert response.status_code == 200, response.text
    return response.json()["records"]


def _reupload(client) -> None:
    upload = client.post("/v1/uploads", json={"metadata": HOSPITAL_YAML}).json()["upload_id"]
    put = client.put(f"/v1/uploads/{upload}/tables/patients",
                     content=patients_frame(200).to_csv(index=False).encode(),
                     headers={"Content-Type": "text/csv"})
    assert put.status_code == 200, put.text
    committed = client.post(f"/v1/uploads/{upload}/commit")
    assert committed.status_code == 200, committed.text


def test_a_new_owner_of_a_reused_name_does_not_see_the_old_history(domain, clients):
    olga, oscar, ann, root = clients["olga"], clients["oscar"], clients["ann"], clients["root"]
    old_query = "SELECT COUNT(*) AS old_secret_question FROM patients"
    assert ann.post("/v1/query", json={"sql": old_query}).status_code == 200
    assert ann.post("/v1/requests", json={"dataset": "hospital", "kind": "exact", "sql": SQL,
                                          "purpose": "old purpose"}).status_code == 200
    assert any(r["query"] == old_query for r in _audit(olga, dataset="hospital"))
    assert olga.delete("/v1/datasets/hospital").status_code == 200

    # oscar uploads a new dataset under the same name and becomes its owner.
    _reupload(oscar)
    assert oscar.put("/v1/users/bob/grants/hospital/query").status_code == 200
    new_query = "SELECT COUNT(*) AS new_question FROM patients"
    assert clients["bob"].post("/v1/query", json={"sql": new_query}).status_code == 200

    seen = _audit(oscar, dataset="hospital")
    assert seen, "the new owner sees the new dataset's records"
    assert any(r["query"] == new_query for r in seen)
    assert not any(r["query"] == old_query for r in seen)
    assert not any(r["actor"] in ("ann", "olga") for r in seen)
    assert "old purpose" not in str(seen) and "old_secret_question" not in str(seen)
    # Also without a dataset filter, and paging with after_seq cannot reach back.
    everything = _audit(oscar)
    assert not any(r["query"] == old_query for r in everything)
    assert not any(r["query"] == old_query for r in _audit(oscar, after_seq=0, limit=1))
    # The old owner no longer owns the name: she sees neither history.
    assert _audit(olga, dataset="hospital") == []
    # Admins still see everything.
    all_records = _audit(root, dataset="hospital")
    assert any(r["query"] == old_query for r in all_records)
    assert any(r["query"] == new_query for r in all_records)


def test_a_later_co_owner_sees_records_from_their_grant_on(domain, clients):
    oscar, bob, root = clients["oscar"], clients["bob"], clients["root"]
    early = "SELECT COUNT(*) AS early_hospital FROM patients"
    assert clients["ann"].post("/v1/query", json={"sql": early}).status_code == 200
    assert root.put("/v1/users/bob/grants/shop/query").status_code == 200
    before = "SELECT COUNT(*) AS before_grant FROM orders"
    assert bob.post("/v1/query", json={"sql": before}).status_code == 200
    assert root.put("/v1/users/olga/grants/shop/own").status_code == 200
    after = "SELECT COUNT(*) AS after_grant FROM orders"
    assert bob.post("/v1/query", json={"sql": after}).status_code == 200

    olga_view = [r["query"] for r in _audit(clients["olga"], dataset="shop")]
    assert after in olga_view and before not in olga_view
    oscar_view = [r["query"] for r in _audit(oscar, dataset="shop")]
    assert before in oscar_view and after in oscar_view
    # Her view of hospital, owned since the start, still reaches back.
    assert early in [r["query"] for r in _audit(clients["olga"], dataset="hospital")]


def test_revoked_and_regranted_owner_starts_afresh(domain, clients):
    root, ann = clients["root"], clients["ann"]
    first = "SELECT COUNT(*) AS first_era FROM patients"
    assert ann.post("/v1/query", json={"sql": first}).status_code == 200
    assert root.delete("/v1/users/olga/grants/hospital/own").status_code == 200
    between = "SELECT COUNT(*) AS while_not_owner FROM patients"
    assert ann.post("/v1/query", json={"sql": between}).status_code == 200
    assert root.put("/v1/users/olga/grants/hospital/own").status_code == 200
    later = "SELECT COUNT(*) AS second_era FROM patients"
    assert ann.post("/v1/query", json={"sql": later}).status_code == 200
    view = [r["query"] for r in _audit(clients["olga"], dataset="hospital")]
    assert later in view and between not in view and first not in view
