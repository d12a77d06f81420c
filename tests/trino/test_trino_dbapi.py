"""The real `trino` DB-API client against a running sqlgate server."""
from __future__ import annotations

import pytest

from tests._require import require_module
from sqlgate.metadata import Budget
from tests.client.live import SECRET_NOTE

trino = require_module("trino")
from trino.auth import BasicAuthentication, JWTAuthentication  # noqa: E402
from trino.exceptions import HttpError, TrinoQueryError, TrinoUserError  # noqa: E402


def connect(live, user="ann", *, password=None, token=None, **kwargs):
    auth = JWTAuthentication(token) if token else BasicAuthentication(
        user, password or live.password(user))
    kwargs.setdefault("catalog", "sqlgate")
    kwargs.setdefault("schema", "hospital")
    return trino.dbapi.connect(host=live.host, port=live.port, user=user, auth=auth,
                               http_scheme="http", allow_insecure_auth=True, **kwargs)


def run(conn, sql, params=None):
    cur = conn.cursor()
    cur.execute(sql, params)
    rows = cur.fetchall()
    return rows, cur


def spent(live, user="ann"):
    status = live.state.gateway.budget(user, "hospital")
    return status.spent_epsilon, status.queries


def test_constant_and_catalog_statements(live):
    conn = connect(live)
    assert run(conn, "SELECT 1")[0] == [[1]]
    rows, cur = run(conn, "SELECT version(), current_user")
    assert rows == [["476-sqlgate", "ann"]]
    assert [d.name for d in cur.description] == ["_col0", "_col1"]
    assert run(conn, "SHOW CATALOGS")[0] == [["sqlgate"], ["system"]]
    assert run(conn, "SHOW SCHEMAS")[0] == [["hospital"], ["information_schema"]]
    assert run(conn, "SHOW SCHEMAS FROM sqlgate LIKE 'hosp%'")[0] == [["hospital"]]
    assert run(conn, "SHOW TABLES")[0] == [["patients"]]
    assert run(conn, "SHOW TABLES FROM hospital LIKE 'x%'")[0] == []
    rows, cur = run(conn, "DESCRIBE patients")
    assert [d.name for d in cur.description] == ["Column", "Type", "Extra", "Comment"]
    assert [r[:2] for r in rows] == [["pid", "bigint"], ["age", "bigint"], ["bmi", "double"],
                                     ["region", "varchar"], ["sex", "varchar"],
                                     ["note", "varchar"]]
    assert rows[1][3] == "bounds [0, 100]"
    assert run(conn, "SHOW COLUMNS FROM sqlgate.hospital.patients")[0] == rows
    jdbc, _ = run(conn, "SELECT table_schem, table_name, column_name, type_name FROM "
                        "system.jdbc.columns WHERE table_schem LIKE 'hosp%' ESCAPE '\\' "
                        "ORDER BY ordinal_position")
    assert [r[2] for r in jdbc] == ["pid", "age", "bmi", "region", "sex", "note"]
    assert run(conn, "SELECT table_cat FROM system.jdbc.catalogs ORDER BY 1")[0] == \
        [["sqlgate"], ["system"]]
    # Catalog answers are built from metadata only: never a data value.
    everything, _ = run(conn, "SELECT * FROM information_schema.columns")
    assert SECRET_NOTE not in repr(everything)


def test_dp_query_pages_one_answer_charged_once(live):
    conn = connect(live)
    before = spent(live)
    rows, cur = run(conn, "SELECT region, COUNT(*) AS n, AVG(age) AS mean_age FROM patients "
                          "WHERE age >= 1 GROUP BY region ORDER BY region")
    # Four public keys over pages of two rows: the answer spans several nextUri pages.
    assert [r[0] for r in rows] == ["east", "north", "south", "west"]
    assert all(isinstance(r[1], int) and isinstance(r[2], float) for r in rows)
    assert [d.type_code for d in cur.description] == ["varchar", "bigint", "double"]
    after = spent(live)
    assert after[1] == before[1] + 1
    assert after[0] == pytest.approx(before[0] + 0.5)
    # The same statement again is the remembered answer: same values, no new cost.
    again, _ = run(conn, "SELECT region, COUNT(*) AS n, AVG(age) AS mean_age FROM patients "
                         "WHERE age >= 1 GROUP BY region ORDER BY region")
    assert again == rows
    assert spent(live) == after


def test_session_epsilon_header_and_set_session(live):
    conn = connect(live, session_properties={"epsilon": "0.25"})
    before = spent(live)[0]
    run(conn, "SELECT COUNT(*) FROM patients WHERE age > 3")
    assert spent(live)[0] == pytest.approx(before + 0.25)
    conn = connect(live)
    cur = conn.cursor()
    cur.execute("SET SESSION epsilon = 0.125")
    cur.fetchall()
    before = spent(live)[0]
    run(conn, "SELECT COUNT(*) FROM patients WHERE age > 4")
    assert spent(live)[0] == pytest.approx(before + 0.125)
    cur = conn.cursor()
    cur.execute("SHOW SESSION")
    assert cur.fetchall()[0][:2] == ["epsilon", "0.125"]
    with pytest.raises(TrinoUserError) as err:
        run(connect(live, session_properties={"epsilon": "-1"}), "SELECT 1")
    assert err.value.error_name == "INVALID_SESSION_PROPERTY"
    with pytest.raises(TrinoUserError) as err:
        run(connect(live, session_properties={"query_max_run_time": "1h"}), "SELECT 1")
    assert err.value.error_name == "INVALID_SESSION_PROPERTY"


@pytest.mark.parametrize("sql, name", [
    ("SELECT * FROM patients", "PERMISSION_DENIED"),
    ("SELECT note, COUNT(*) FROM patients GROUP BY pid, note", "PERMISSION_DENIED"),
    ("SELEC COUNT(*) FROM patients", "SYNTAX_ERROR"),
    ("SELECT COUNT(*) FROM nowhere", "TABLE_NOT_FOUND"),
    ("SELECT COUNT(*) FROM hive.hospital.patients", "CATALOG_NOT_FOUND"),
    ("INSERT INTO patients VALUES (1, 2, 3.0, 'north', 'f', 'x')", "READ_ONLY_VIOLATION"),
    ("SELECT COUNT(*) FROM patients p JOIN information_schema.tables t ON true",
     "NOT_SUPPORTED"),
    ("SELECT * FROM TABLE(system.sequence(1, 10))", "NOT_SUPPORTED"),
    ("EXPLAIN ANALYZE SELECT COUNT(*) FROM patients", "NOT_SUPPORTED"),
])
def test_errors_are_trino_shaped_and_spend_nothing(live, sql, name):
    before = spent(live)
    with pytest.raises(TrinoQueryError) as err:
        run(connect(live), sql)
    assert err.value.error_name == name, err.value
    assert "SQLSTATE" in err.value.message
    assert SECRET_NOTE not in err.value.message
    assert spent(live) == before


def test_budget_exhaustion_is_an_insufficient_resources_error(live):
    live.state.gateway.set_budget("olga", "hospital", Budget(1.0, 1e-6), set_by="test")
    before = spent(live, "olga")
    with pytest.raises(TrinoQueryError) as err:
        run(connect(live, "olga", session_properties={"epsilon": "2"}),
            "SELECT COUNT(*) FROM patients WHERE age > 5")
    assert err.value.error_name == "EXCEEDED_PRIVACY_BUDGET"
    assert err.value.error_type == "INSUFFICIENT_RESOURCES"
    assert "53400" in err.value.message
    assert spent(live, "olga") == before


def test_explain_shows_cost_and_spends_nothing(live):
    before = spent(live)
    rows, _ = run(connect(live), "EXPLAIN SELECT sex, COUNT(*) AS n, AVG(bmi) FROM patients "
                                 "GROUP BY sex")
    text = rows[0][0]
    assert "epsilon=0.5" in text and "n (int): noisy, 95% CI ±" in text, text
    assert spent(live) == before


def test_parameters_with_execute_immediate_and_legacy_prepare(live):
    for legacy in (False, True):
        conn = connect(live, legacy_prepared_statements=legacy)
        rows, _ = run(conn, "SELECT table_name FROM information_schema.tables "
                            "WHERE table_schema = ? AND table_name LIKE ?", ("hospital", "pat%"))
        assert rows == [["patients"]]
        # A quote inside a parameter stays inside its literal.
        rows, _ = run(conn, "SELECT table_name FROM information_schema.tables "
                            "WHERE table_schema = ?", ("x' OR '1'='1",))
        assert rows == []
        rows, _ = run(conn, "SELECT COUNT(*) AS n FROM patients WHERE region = ? AND age > ?",
                      ("north", 10 + int(legacy)))
        assert len(rows) == 1 and isinstance(rows[0][0], int)


def test_authentication(live):
    token_conn = connect(live, token=live.tokens["ann"])
    assert run(token_conn, "SELECT current_user")[0] == [["ann"]]
    with pytest.raises(HttpError, match="401"):
        run(connect(live, password="wrong-password"), "SELECT 1")
    # X-Trino-User must be the authenticated user.
    impostor = trino.dbapi.connect(host=live.host, port=live.port, user="olga",
                                   auth=BasicAuthentication("ann", live.password("ann")),
                                   http_scheme="http", allow_insecure_auth=True)
    with pytest.raises(HttpError, match="401"):
        run(impostor, "SELECT 1")
    unauthenticated = trino.dbapi.connect(host=live.host, port=live.port, user="ann",
                                          http_scheme="http")
    with pytest.raises(HttpError, match="401"):
        run(unauthenticated, "SELECT 1")


def test_datasets_without_grant_are_invisible(live):
    conn = connect(live, user="bob", schema=None)
    assert run(conn, "SHOW SCHEMAS")[0] == [["information_schema"]]
    assert run(conn, "SELECT table_name FROM information_schema.tables "
                     "WHERE table_schema = 'hospital'")[0] == []
    with pytest.raises(TrinoUserError) as err:
        run(conn, "SELECT COUNT(*) FROM hospital.patients")
    assert err.value.error_name == "TABLE_NOT_FOUND"
    with pytest.raises(TrinoUserError) as err:
        run(conn, "USE hospital")
    assert err.value.error_name == "SCHEMA_NOT_FOUND"


def test_use_sets_schema_for_later_statements(live):
    conn = connect(live, schema=None)
    with pytest.raises(TrinoUserError):
        run(conn, "SHOW TABLES")
    run(conn, "USE hospital")
    assert run(conn, "SHOW TABLES")[0] == [["patients"]]
    rows, _ = run(conn, "SELECT COUNT(*) FROM patients WHERE age > 6")
    assert isinstance(rows[0][0], int)
