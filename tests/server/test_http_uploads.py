"""Owners upload metadata + CSV/Parquet; bad uploads leave nothing loaded and no files."""
from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq

from tests.server.conftest import (HOSPITAL_YAML, SECRET_NOTE, SHOP_YAML, assert_error,
                                   make_domain, orders_frame, patients_frame)

CLINIC_YAML = """
dataset: clinic
budget: {epsilon: 10.0, delta: 1.0e-6}
tables:
  patients:
    source: /etc/passwd
    privacy_unit: pid
    columns:
      pid: int
      age: {type: int, lower: 0, upper: 100}
  visits:
    source: visits.parquet
    privacy_unit: pid
    max_groups_per_unit: 2
    max_rows_per_group: 2
    columns:
      pid: int
      cost: {type: float, lower: 0, upper: 1000}
"""


def _csv(frame) -> bytes:
    return frame.to_csv(index=False).encode()


def _parquet(frame) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
    return sink.getvalue()


def _leftovers(domain) -> list:
    return list(domain.state.uploads.root.iterdir())


def _start(client, yaml_text, **extra):
    response = client.post("/v1/uploads", json={"metadata": yaml_text, **extra})
    assert response.status_code == 200, response.text
    return response.json()["upload_id"]


def test_owner_uploads_two_tables_and_becomes_owner(domain, clients):
    oscar = clients["oscar"]
    upload = _start(oscar, CLINIC_YAML)
    session = oscar.get(f"/v1/uploads/{upload}").json()
    assert session["ready"] is False and {t["table"] for t in session["tables"]} == \
        {"patients", "visits"}
    patients = patients_frame(200)[["pid", "age"]]
    visits = patients_frame(200)[["pid"]].assign(cost=12.5)

    def chunked(data: bytes, size: int = 1000):
        for i in range(0, len(data), size):
            yield data[i:i + size]

    # The declared source (/etc/passwd) is never read: the uploaded file is.
    put = oscar.put(f"/v1/uploads/{upload}/tables/patients", content=chunked(_csv(patients)),
                    headers={"Content-Type": "text/csv"})
    assert put.status_code == 200, put.text
    progress = oscar.get(f"/v1/uploads/{upload}").json()
    [done] = [t for t in progress["tables"] if t["table"] == "patients"]
    assert done["complete"] and done["bytes_received"] == len(_csv(patients))
    put = oscar.put(f"/v1/uploads/{upload}/tables/visits", content=_parquet(visits))
    assert put.status_code == 200 and put.json()["ready"] is True
    committed = oscar.post(f"/v1/uploads/{upload}/commit")
    assert committed.status_code == 200, committed.text
    assert committed.json()["permissions"] == ["query", "own"]
    assert committed.json()["replaced"] is False
    assert _leftovers(domain) == []
    assert_error(oscar.get(f"/v1/uploads/{upload}"), 404, "not_found")
    counted = oscar.post("/v1/query", json={"sql": "SELECT COUNT(*) AS n FROM clinic.patients",
                                            "epsilon": 5})
    assert counted.status_code == 200
    assert abs(counted.json()["rows"][0][0] - 200) < 30
    records = domain.state.audit.records(action="upload.commit")
    assert records[-1]["dataset"] == "clinic" and records[-1]["decision"] == "ok"


def _nothing_loaded(domain, clients, name="clinic"):
    assert name not in {m.name for m in domain.state.gateway.datasets()}
    assert _leftovers(domain) == []
    tables = domain.state.gateway.executor.connection.execute(
        "SELECT table_schema, table_name FROM information_schema.tables "
        "WHERE table_schema = ?", [name]).fetchall()
    assert tables == []


def test_bad_metadata_is_refused_before_any_file(domain, clients):
    oscar = clients["oscar"]
    error = assert_error(oscar.post("/v1/uploads", json={"metadata": "dataset: [unclosed"}),
                         400, "invalid_metadata")
    assert "YAML" in error["message"]
    bad_bounds = CLINIC_YAML.replace("upper: 100", "upper: -5")
    error = assert_error(oscar.post("/v1/uploads", json={"metadata": bad_bounds}), 400,
                         "invalid_metadata")
    assert error["details"]["field"].startswith("tables.patients.columns.age")
    assert_error(oscar.post("/v1/uploads", json={"metadata": 7}), 400, "invalid_parameter")
    _nothing_loaded(domain, clients)


def test_file_not_matching_metadata_loads_nothing(domain, clients):
    oscar = clients["oscar"]
    upload = _start(oscar, CLINIC_YAML)
    patients = patients_frame(100)[["pid", "age"]]
    visits = patients_frame(100)[["pid", "note"]].rename(columns={"note": "cost"})  # not floats
    assert oscar.put(f"/v1/uploads/{upload}/tables/patients", content=_csv(patients)).status_code \
        == 200
    assert oscar.put(f"/v1/uploads/{upload}/tables/visits?format=csv",
                     content=_csv(visits)).status_code == 200
    error = assert_error(oscar.post(f"/v1/uploads/{upload}/commit"), 400, "invalid_data")
    assert "cost" in error["message"]
    _nothing_loaded(domain, clients)
    assert_error(oscar.get(f"/v1/uploads/{upload}"), 404, "not_found")

    upload = _start(oscar, CLINIC_YAML)
    oscar.put(f"/v1/uploads/{upload}/tables/patients", content=b"not,a\n\"broken")
    oscar.put(f"/v1/uploads/{upload}/tables/visits", content=b"PAR1garbagePAR1",
              headers={"Content-Type": "application/vnd.apache.parquet"})
    response = oscar.post(f"/v1/uploads/{upload}/commit")
    assert_error(response, 400, response.json()["error"]["code"])
    assert response.json()["error"]["code"] in ("invalid_data", "invalid_metadata")
    _nothing_loaded(domain, clients)


def test_missing_table_keeps_the_session_open(domain, clients):
    oscar = clients["oscar"]
    upload = _start(oscar, CLINIC_YAML)
    oscar.put(f"/v1/uploads/{upload}/tables/patients",
              content=_csv(patients_frame(50)[["pid", "age"]]))
    error = assert_error(oscar.post(f"/v1/uploads/{upload}/commit"), 400, "invalid_parameter")
    assert error["details"]["missing_tables"] == ["visits"]
    assert oscar.get(f"/v1/uploads/{upload}").json()["status"] == "open"
    assert_error(oscar.put(f"/v1/uploads/{upload}/tables/nope", content=b"a\n1\n"), 404,
                 "not_found")
    assert_error(oscar.put(f"/v1/uploads/{upload}/tables/visits", content=b""), 400,
                 "invalid_parameter")
    assert oscar.delete(f"/v1/uploads/{upload}").status_code == 200
    _nothing_loaded(domain, clients)


def test_oversize_file_is_413_and_removed(tmp_path):
    domain = make_domain(tmp_path / "cap", max_upload_bytes=4096)
    try:
        olga = domain.client("olga")
        yaml_text = CLINIC_YAML.replace("dataset: clinic", "dataset: capped")
        upload = _start(olga, yaml_text)
        big = _csv(patients_frame(2000)[["pid", "age"]])
        assert len(big) > 4096
        error = assert_error(olga.put(f"/v1/uploads/{upload}/tables/patients", content=big), 413,
                             "limit_exceeded")
        assert error["details"]["limit_bytes"] == 4096

        def stream():           # chunked, no Content-Length: refused while streaming
            for i in range(0, len(big), 1000):
                yield big[i:i + 1000]

        assert_error(olga.put(f"/v1/uploads/{upload}/tables/patients", content=stream()), 413,
                     "limit_exceeded")
        session = olga.get(f"/v1/uploads/{upload}").json()
        assert all(t["bytes_received"] == 0 and not t["complete"] for t in session["tables"])
        assert list((domain.state.uploads.root / upload).iterdir()) == []
    finally:
        domain.state.close()


def test_replacing_needs_own_and_explicit_replace(domain, clients):
    oscar, olga, root = clients["oscar"], clients["olga"], clients["root"]
    # oscar does not own hospital: it looks missing to him, and he cannot create it either.
    assert_error(oscar.post("/v1/uploads", json={"metadata": HOSPITAL_YAML, "replace": True}),
                 404, "not_found")
    assert_error(olga.post("/v1/uploads", json={"metadata": HOSPITAL_YAML}), 409, "conflict")
    upload = _start(olga, HOSPITAL_YAML, replace=True)
    smaller = patients_frame(100)
    olga.put(f"/v1/uploads/{upload}/tables/patients", content=_csv(smaller))
    # Somebody else's session is invisible.
    assert_error(oscar.get(f"/v1/uploads/{upload}"), 404, "not_found")
    assert_error(oscar.post(f"/v1/uploads/{upload}/commit"), 404, "not_found")
    committed = olga.post(f"/v1/uploads/{upload}/commit")
    assert committed.status_code == 200 and committed.json()["replaced"] is True
    rows = domain.state.gateway.executor.connection.execute(
        'SELECT COUNT(*) FROM "hospital"."patients"').fetchone()[0]
    assert rows == 100
    # A failed replacement keeps the old data.
    upload = _start(root, HOSPITAL_YAML, replace=True)
    root.put(f"/v1/uploads/{upload}/tables/patients", content=b"pid,age\n1,2\n")
    assert_error(root.post(f"/v1/uploads/{upload}/commit"), 400, "invalid_data")
    assert domain.state.gateway.executor.connection.execute(
        'SELECT COUNT(*) FROM "hospital"."patients"').fetchone()[0] == 100
    assert _leftovers(domain) == []


def test_errors_of_bad_files_never_quote_values(domain, clients):
    oscar = clients["oscar"]
    upload = _start(oscar, SHOP_YAML.replace("dataset: shop", "dataset: shop2"))
    frame = orders_frame(20).astype({"amount": str})
    frame.loc[3, "amount"] = SECRET_NOTE
    oscar.put(f"/v1/uploads/{upload}/tables/orders", content=_csv(frame),
              headers={"Content-Type": "text/csv"})
    error = assert_error(oscar.post(f"/v1/uploads/{upload}/commit"), 400, "invalid_data")
    assert "amount" in error["message"]
    assert SECRET_NOTE not in str(domain.state.audit.records(limit=10_000))


def test_idle_sessions_expire_and_old_files_go_at_start(tmp_path):
    from server.http.uploads import UploadSessions
    from sqlgate.metadata import parse_dataset_text

    root = tmp_path / "uploads"
    (root / "leftover").mkdir(parents=True)
    (root / "leftover" / "patients.csv").write_text("pid\n1\n")
    sessions = UploadSessions(root, max_file_bytes=100, ttl_s=60)
    assert list(root.iterdir()) == []                      # an earlier run's files are removed
    session = sessions.create("olga", parse_dataset_text(CLINIC_YAML), replace_existing=False)
    assert all(t.source is None for t in session.meta.tables.values())
    sessions.expire()
    assert sessions.get(session.id, "olga") is session     # still fresh
    session.touched -= 3600                                # idle for an hour
    sessions.expire()
    assert list(root.iterdir()) == []
    try:
        sessions.get(session.id, "olga")
        raise AssertionError("an expired session is still served")
    except Exception as exc:  # noqa: BLE001
        assert type(exc).__name__ == "NotFound"
