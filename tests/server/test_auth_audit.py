import hashlib
import hmac
import sqlite3
import threading

import pytest

from server.audit import AuditEvent, AuditLog
from server.auth import UserStore, scram_verifier_for
from sqlgate.errors import AuthenticationFailed, Conflict, InvalidParameter, NotFound


@pytest.fixture
def users(tmp_path):
    return UserStore(tmp_path / "users.sqlite")


def test_tokens_are_stored_hashed_and_revocable(users, tmp_path):
    users.create_user("alice", "analyst")
    token = users.issue_token("alice", label="laptop")
    assert users.authenticate_token(token).name == "alice"
    raw = (tmp_path / "users.sqlite").read_bytes()
    assert token.encode() not in raw
    [info] = users.tokens("alice")
    users.revoke_token("alice", info.token_id)
    with pytest.raises(AuthenticationFailed):
        users.authenticate_token(token)
    with pytest.raises(AuthenticationFailed):
        users.authenticate_token("sqg_not-a-token")


def test_password_is_a_scram_verifier(users):
    users.create_user("bob", "owner", password="correct horse")
    assert users.authenticate_password("bob", "correct horse").role == "owner"
    with pytest.raises(AuthenticationFailed):
        users.authenticate_password("bob", "wrong password")
    with pytest.raises(AuthenticationFailed):
        users.authenticate_password("nobody", "correct horse")
    verifier = users.scram_verifier("bob")
    again = scram_verifier_for("correct horse", verifier.salt, verifier.iterations)
    assert again.stored_key == verifier.stored_key and again.server_key == verifier.server_key
    with pytest.raises(InvalidParameter):
        users.set_password("bob", "short")


def test_roles_and_grants(users):
    admin = users.create_user("root", "admin")
    owner = users.create_user("olga", "owner")
    analyst = users.create_user("ann", "analyst")
    with pytest.raises(Conflict):
        users.create_user("ann", "analyst")
    with pytest.raises(InvalidParameter):
        users.create_user("x", "superuser")
    with pytest.raises(InvalidParameter):
        users.create_user("bad name", "analyst")
    users.grant("olga", "hospital", "own")
    users.grant("ann", "hospital", "query")
    with pytest.raises(InvalidParameter):
        users.grant("ann", "hospital", "own")
    assert users.can(owner, "hospital", "own") and users.can(owner, "hospital", "query")
    assert users.can(analyst, "hospital", "query")
    assert not users.can(analyst, "hospital", "own")
    assert not users.can(analyst, "tpch", "query")
    assert users.can(admin, "tpch", "own")
    assert users.datasets_for(analyst, "query") == {"hospital"}
    assert users.datasets_for(admin, "query", ["a", "b"]) == {"a", "b"}
    users.revoke("ann", "hospital", "query")
    assert not users.can(analyst, "hospital", "query")
    users.disable_user("olga")
    with pytest.raises(NotFound):
        users.user("olga")
    assert not users.can(owner, "hospital", "own")


def test_audit_chain_verifies_and_detects_tampering(tmp_path):
    log = AuditLog.in_home(tmp_path)
    for i in range(5):
        log.append(AuditEvent(channel="http", action="query", decision="ok", actor="ann",
                              dataset="hospital", query=f"SELECT COUNT(*) FROM t{i}",
                              epsilon=0.5, rows_out=1, details={"i": i}))
    assert log.verify().ok and log.verify().records == 5
    assert [r["details"]["i"] for r in log.records(actor="ann")] == list(range(5))
    conn = sqlite3.connect(tmp_path / "audit.sqlite")
    with pytest.raises(sqlite3.DatabaseError):
        conn.execute("UPDATE audit SET actor = 'eve' WHERE seq = 2")
    # Someone with raw file access drops the triggers and edits a record.
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("UPDATE audit SET epsilon = 0.01 WHERE seq = 3")
    conn.commit()
    report = log.verify()
    assert not report.ok and report.first_bad_seq == 3
    # Recomputing the edited record's hash without the key does not fool the chain.
    conn.execute("DROP TRIGGER audit_no_delete")
    conn.execute("DELETE FROM audit WHERE seq = 3")
    conn.commit()
    report = log.verify()
    assert not report.ok and report.first_bad_seq == 3


def test_concurrent_appends_form_one_chain(tmp_path):
    log = AuditLog.in_home(tmp_path)

    def worker(n):
        for i in range(20):
            AuditLog.in_home(tmp_path).append(AuditEvent(channel="pgwire", action="query",
                                                         decision="ok", actor=f"u{n}"))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = log.verify()
    assert report.ok and report.records == 160


def test_owner_view_is_scoped(tmp_path):
    log = AuditLog(tmp_path / "a.sqlite")
    log.append(AuditEvent(channel="http", action="query", decision="ok", dataset="hospital"))
    log.append(AuditEvent(channel="http", action="query", decision="ok", dataset="tpch"))
    log.append(AuditEvent(channel="http", action="login", decision="ok"))
    assert {r["dataset"] for r in log.records(datasets={"hospital"})} == {"hospital", None}
    assert {r["dataset"] for r in log.records(datasets={"hospital"}, include_unscoped=False)} == {"hospital"}
    assert log.records(datasets=set(), include_unscoped=False) == []


def _service(tmp_path):
    import pandas as pd
    from server.service import GatewayService
    from sqlgate.gateway import Gateway
    from sqlgate.metadata import parse_dataset

    gw = Gateway()
    for name in ("hospital", "secret"):
        gw.add_dataset(parse_dataset({
            "dataset": name, "budget": {"epsilon": 10, "delta": 1e-6},
            "tables": {"t": {"privacy_unit": "pid", "columns": {
                "pid": "int", "age": {"type": "int", "lower": 0, "upper": 100}}}}}),
            {"t": pd.DataFrame({"pid": range(50), "age": [40] * 50})})
    users = UserStore(tmp_path / "users.sqlite")
    users.create_user("ann", "analyst")
    users.grant("ann", "hospital", "query")
    return gw, GatewayService(gw, users, AuditLog.in_home(tmp_path), max_concurrent_per_user=1)


def test_service_scopes_sql_to_grants_and_audits_everything(tmp_path):
    from server.service import Caller
    from sqlgate.errors import PermissionDenied, UndefinedTable

    gw, service = _service(tmp_path)
    ann = Caller(service.users.user("ann"), "http", "127.0.0.1")
    assert {m.name for m in service.datasets(ann)} == {"hospital"}
    result = service.query(ann, "SELECT COUNT(*) FROM hospital.t", epsilon=1.0)
    assert result.dataset == "hospital"
    # Another dataset is indistinguishable from a missing one, and the bare name is unique.
    with pytest.raises(UndefinedTable) as missing:
        service.query(ann, "SELECT COUNT(*) FROM nothere.t")
    with pytest.raises(UndefinedTable) as forbidden:
        service.query(ann, "SELECT COUNT(*) FROM secret.t")
    assert str(missing.value).replace("nothere", "X") == str(forbidden.value).replace("secret", "X")
    assert service.query(ann, "SELECT COUNT(*) FROM t", epsilon=1.0).dataset == "hospital"
    with pytest.raises(NotFound):
        service.budget(ann, "secret")
    records = service.audit.records(actor="ann")
    assert [r["decision"] for r in records] == ["ok", "refused", "refused", "ok"]
    assert records[0]["epsilon"] == 1.0 and records[0]["rows_out"] == 1
    assert records[0]["rewritten"] and records[1]["code"] == "undefined_table"
    assert service.audit.verify().ok
    gw.close()


def test_service_limits_concurrency_per_user(tmp_path):
    from server.service import Caller
    from sqlgate.errors import TooManyRequests

    gw, service = _service(tmp_path)
    ann = Caller(service.users.user("ann"), "http")
    with service.limiter.slot("ann"):
        with pytest.raises(TooManyRequests):
            service.query(ann, "SELECT COUNT(*) FROM t")
    assert service.query(ann, "SELECT COUNT(*) FROM t").rows
    gw.close()


def test_failed_queries_are_audited_with_what_they_cost(tmp_path, monkeypatch):
    """Refunded before noise: audited at epsilon 0 with the refund's reason. Failed after
    noise: audited at the epsilon the ledger charged. The audit agrees with the ledger."""
    from server.service import Caller
    from sqlgate.errors import ExecutionFailed, UnsupportedQuery

    gw, service = _service(tmp_path)
    ann = Caller(service.users.user("ann"), "http", "127.0.0.1")

    def engine_fails(sql, **kwargs):
        raise ExecutionFailed()

    with monkeypatch.context() as patch:
        patch.setattr(gw.executor, "run", engine_fails)
        with pytest.raises(ExecutionFailed):
            service.query(ann, "SELECT COUNT(*) FROM hospital.t", epsilon=1.0)

    def post_fails(*args, **kwargs):
        raise UnsupportedQuery("the query's result expressions could not be computed")

    with monkeypatch.context() as patch:
        patch.setattr(gw, "_postprocess", post_fails)
        with pytest.raises(UnsupportedQuery):
            service.query(ann, "SELECT COUNT(*) FROM hospital.t", epsilon=0.5)
    refunded, charged = service.audit.records(actor="ann")
    assert refunded["decision"] == "error" and refunded["code"] == "execution_failed"
    assert refunded["dataset"] == "hospital" and refunded["epsilon"] == 0.0
    assert refunded["details"] == {"charge": "refunded", "reason": "engine failed"}
    assert charged["epsilon"] == 0.5 and charged["details"] == {"charge": "charged"}
    assert gw.budget("ann", "hospital").spent_epsilon == pytest.approx(0.5)
    assert service.audit.verify().ok
    gw.close()
