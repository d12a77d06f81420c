"""The issue's attack list, through the front-end service (GatewayService), on a dataset with
planted secrets.

Each attack must be refused with the right error class, before spending any budget, with one
`refused` audit record, and no rendering of the error (message, hint, details, traceback,
chained cause) may carry a planted value. Attacks that are legitimate DP queries must be
answered with noise and never release a planted value. test_attacks.py holds the original,
gateway-level subset; this file does not repeat it.
"""
from __future__ import annotations

import pandas as pd
import pytest

from server.audit import AuditLog
from server.auth import UserStore
from server.service import Caller, GatewayService
from sqlgate.errors import (InvalidParameter, PolicyRefused, ReadOnlyViolation, SqlSyntaxError,
                            UndefinedColumn, UndefinedTable, UnsupportedQuery)
from sqlgate.metadata import parse_dataset
from tests.security.sentinel import (HIDDEN_NAME, SECRET_NAME, assert_error_is_clean,
                                     assert_rows_are_clean, build_gateway, leaked_needles)

P, U, R, T, C, S = (PolicyRefused, UnsupportedQuery, ReadOnlyViolation, UndefinedTable,
                    UndefinedColumn, SqlSyntaxError)

RAW_ROWS = [
    ("SELECT * FROM people", P),
    ("SELECT people.* FROM people", P),
    ("SELECT p.*, COUNT(*) FROM people p", P),
    ("SELECT name FROM people", P),
    ("SELECT DISTINCT name FROM people", P),
    ("SELECT name FROM people LIMIT 1", P),
    ("SELECT salary FROM people ORDER BY salary DESC LIMIT 1 OFFSET 3", P),
    ("FROM people", P),
    # grouping by the unit, directly, by position, through a join, an alias or a CTE
    ("SELECT pid, COUNT(*) FROM people GROUP BY 1", P),
    ("SELECT COUNT(*) FROM visits v JOIN people p ON v.pid = p.pid GROUP BY p.pid", P),
    ("SELECT u, COUNT(*) FROM (SELECT pid AS u FROM people) t GROUP BY u", P),
    ("WITH w AS (SELECT pid AS region FROM people) SELECT region, COUNT(*) FROM w GROUP BY region", P),
    # subqueries and CTEs that smuggle rows or per-unit values
    ("WITH w AS (SELECT * FROM people) SELECT * FROM w", P),
    ("WITH w AS (SELECT name FROM people) SELECT name, COUNT(*) FROM w", P),
    ("SELECT COUNT(*), n FROM (SELECT name AS n FROM people) t", P),
    ("SELECT COUNT(*) FROM (SELECT * FROM people LIMIT 1) t", U),
    ("SELECT SUM(salary) FROM (SELECT * FROM people ORDER BY salary DESC LIMIT 1) t", U),
    ("WITH top AS (SELECT * FROM people ORDER BY salary DESC LIMIT 1) SELECT SUM(salary) FROM top", U),
    ("SELECT COUNT(*) FROM (SELECT DISTINCT name FROM people) t", U),
    ("SELECT SUM(s) FROM (SELECT SUM(salary) AS s FROM people GROUP BY pid) t", U),
    ("WITH per AS (SELECT pid, COUNT(*) AS c FROM visits GROUP BY pid) "
     "SELECT c, COUNT(*) FROM per GROUP BY c", U),
    ("SELECT COUNT(*) FROM people WHERE salary > (SELECT AVG(salary) FROM people)", U),
    ("SELECT COUNT(*) FROM people WHERE name IN (SELECT dept FROM visits)", U),
    ("SELECT COUNT(*) FROM people WHERE EXISTS (SELECT 1 FROM visits WHERE dept = 'x')", U),
    ("SELECT (SELECT name FROM people LIMIT 1), COUNT(*) FROM people", U),
    ("WITH d AS (DELETE FROM people RETURNING *) SELECT COUNT(*) FROM d", U),
    # window functions
    ("SELECT COUNT(*) FROM (SELECT ROW_NUMBER() OVER () AS rn FROM people) t WHERE rn = 1", P),
    ("SELECT RANK() OVER (ORDER BY salary), COUNT(*) FROM people", P),
    ("SELECT COUNT(*) FROM people QUALIFY 1 = 1", U),
    # aggregates that return a row's value
    ("SELECT LAST(name) FROM people", U),
    ("SELECT ARG_MAX(name, salary) FROM people", U),
    ("SELECT MODE(name) FROM people", U),
    # LIMIT tricks (LIMIT is post-processing of noisy rows; non-literal limits are refused)
    ("SELECT COUNT(*) FROM people LIMIT ALL", U),
    ("SELECT COUNT(*) FROM people LIMIT 1 + 1", U),
    ("SELECT COUNT(*) FROM people LIMIT -1", U),
    ("SELECT COUNT(*) FROM people USING SAMPLE 1", U),
]

FILES_NETWORK_SETTINGS = [
    ("SELECT COUNT(*) FROM read_csv_auto('/etc/passwd')", P),
    ("SELECT COUNT(*) FROM read_json('/tmp/x.json')", P),
    ("SELECT COUNT(*) FROM read_text('/etc/passwd')", P),
    ("SELECT COUNT(*) FROM read_blob('/etc/passwd')", P),
    ("SELECT COUNT(*) FROM '/etc/passwd'", T),
    ("SELECT COUNT(*) FROM \"/etc/passwd\"", T),
    ("SELECT COUNT(*) FROM 'https://example.com/x.parquet'", T),
    ("SELECT COUNT(*) FROM read_parquet('s3://bucket/x.parquet')", P),
    ("SELECT COUNT(*) FROM sqlite_scan('/tmp/x.db', 't')", P),
    ("SELECT COUNT(*) FROM postgres_scan('host=x', 'public', 't')", P),
    ("SELECT COUNT(*) FROM people p JOIN read_csv('/etc/passwd') f ON p.name = f.column0", P),
    ("SELECT COUNT(*) FROM people WHERE name IN (SELECT * FROM read_csv('/etc/passwd'))", P),
    ("SELECT COUNT(*) FROM duckdb_settings()", P),
    ("SELECT COUNT(*) FROM duckdb_columns()", P),
    ("SELECT COUNT(*) FROM pg_catalog.pg_stats", T),
    ("SELECT COUNT(*) FROM main.people", T),
    ("SELECT COUNT(*) FROM memory.hr.people", T),
    ("COPY (SELECT * FROM people) TO '/tmp/out.csv'", P),
    ("COPY people FROM '/etc/passwd'", P),
    ("/* hidden */ COPY people TO '/tmp/x'", P),
    ("SELECT 1; COPY people TO '/tmp/x'", P),
    ("EXPORT DATABASE '/tmp/x'", P),
    ("IMPORT DATABASE '/tmp/x'", P),
    ("ATTACH 'https://example.com/x.db'", P),
    ("DETACH hr", P),
    ("FORCE INSTALL httpfs", S),
    ("LOAD '/tmp/evil.duckdb_extension'", P),
    ("PRAGMA enable_profiling", P),
    ("SET GLOBAL enable_external_access = true", P),
    ("RESET enable_external_access", U),
    ("SET VARIABLE x = 1", U),
    ("CALL pragma_version()", P),
    ("CHECKPOINT", P),
    ("VACUUM", P),
    ("USE hr", P),
    ("CREATE SECRET s (TYPE s3, KEY_ID 'x')", U),
    ("SELECT COUNT(*) FROM people WHERE name = current_setting('home_directory')", U),
    ("SELECT COUNT(*) FROM people WHERE name = read_text('/etc/passwd')", U),
    ("DESCRIBE people", U),
    ("SHOW TABLES", U),
    ("SUMMARIZE people", U),  # real statistics of the private table
    ("EXPLAIN ANALYZE SELECT COUNT(*) FROM people", U),
    ("PREPARE q AS SELECT COUNT(*) FROM people", U),
    ("EXECUTE q", U),
]

WRITES_AND_SCRIPTS = [
    ("DROP SCHEMA hr CASCADE", R),
    ("DELETE FROM people", R),
    ("INSERT INTO people SELECT * FROM people", R),
    ("CREATE TABLE x AS SELECT * FROM people", R),
    ("CREATE VIEW v AS SELECT * FROM people", R),
    ("CREATE TEMP TABLE x (a INT)", R),
    ("CREATE MACRO f(x) AS x", U),
    ("CREATE FUNCTION f(x) AS x", R),
    ("ALTER TABLE people ADD COLUMN z INT", R),
    ("TRUNCATE people", R),
    ("MERGE INTO people USING visits ON people.pid = visits.pid WHEN MATCHED THEN DELETE", R),
    ("SELECT COUNT(*) INTO x FROM people", U),
    ("BEGIN", U),
    ("ROLLBACK", U),
    ("SELECT COUNT(*) FROM people; SELECT COUNT(*) FROM people", U),
    ("SELECT COUNT(*) FROM people\x00; DROP TABLE people", U),
]

JOINS_AND_SETS = [
    ("SELECT COUNT(*) FROM people a JOIN visits b ON a.name = b.dept", P),
    ("SELECT COUNT(*) FROM people, visits", P),
    ("SELECT COUNT(*) FROM people NATURAL JOIN visits", P),
    ("SELECT COUNT(*) FROM people a ASOF JOIN visits b ON a.pid = b.pid", P),
    ("SELECT COUNT(*) FROM people a JOIN visits b USING (pid)", U),
    ("SELECT COUNT(*) FROM people a JOIN visits b ON a.pid = b.pid OR a.region = 'n'", P),
    ("SELECT COUNT(*) FROM people a JOIN visits b ON a.pid = b.vid", P),
    ("SELECT COUNT(*) FROM people a JOIN visits b ON a.pid = b.pid + 0", P),
    ("SELECT COUNT(*) FROM people a JOIN visits b ON a.pid < b.pid", P),
    ("SELECT COUNT(*) FROM people a LEFT JOIN visits b ON a.pid = b.pid", U),
    ("SELECT COUNT(*) FROM people a RIGHT JOIN visits b ON a.pid = b.pid", U),
    ("SELECT COUNT(*) FROM people a FULL JOIN visits b ON a.pid = b.pid", U),
    ("SELECT COUNT(*) FROM people a SEMI JOIN visits b ON a.pid = b.pid", U),
    ("SELECT COUNT(*) FROM people p JOIN LATERAL (SELECT * FROM visits v WHERE v.pid = p.pid) x ON true", U),
    ("SELECT COUNT(*) FROM people, UNNEST([1,2]) t(x)", U),
    ("SELECT label, COUNT(*) FROM regions GROUP BY label", U),  # public tables alone
    ("SELECT COUNT(*) FROM people INTERSECT SELECT COUNT(*) FROM people", U),
    ("SELECT COUNT(*) FROM people WHERE salary > 1 EXCEPT SELECT COUNT(*) FROM people", U),
]

UNBOUNDED_AND_KEYS = [
    ("SELECT SUM(income) FROM people", P),
    ("SELECT AVG(income) FROM people", P),
    ("SELECT MEDIAN(income) FROM people", P),
    ("SELECT MAX(income) FROM people", P),
    ("SELECT VARIANCE(income) FROM people", P),
    ("SELECT SUM(salary * 1000) FROM people", U),
    ("SELECT SUM(CASE WHEN name = 'x' THEN income ELSE 0 END) FROM people", U),
    ("SELECT SUM(DISTINCT salary) FROM people", U),
    ("SELECT AVG(CAST(income AS INT)) FROM people", U),
    ("SELECT SUM(salary) FILTER (WHERE name = 'x') FROM people", P),
    ("SELECT SUM(region) FROM people", U),
    ("SELECT MAX(pid) FROM people", P),
    ("SELECT lower(name), COUNT(*) FROM people GROUP BY lower(name)", U),
    ("SELECT CASE WHEN salary > 0 THEN name END AS k, COUNT(*) FROM people GROUP BY k", U),
    ("SELECT name || '', COUNT(*) FROM people GROUP BY name || ''", U),
    ("SELECT COUNT(*) FROM people GROUP BY ROLLUP(region)", U),
    ("SELECT COUNT(*) FROM people GROUP BY GROUPING SETS ((region), ())", U),
    ("SELECT width_bucket(salary, 0, 10000, 10000) a, width_bucket(age, 0, 100, 10000) b, "
     "COUNT(*) FROM people GROUP BY a, b", P),  # public cells beyond max_public_cells
    ("SELECT COUNT(*) FROM people ORDER BY name", P),
    ("SELECT region, COUNT(*) FROM people GROUP BY region HAVING MAX(name) = 'x'", U),
    ("SELECT region, COUNT(*) FROM people GROUP BY region HAVING salary > 1", P),
]

DATA_FUNCTIONS = [
    ("SELECT COUNT(*) FROM people WHERE name SIMILAR TO 'ZZ%'", U),
    ("SELECT COUNT(*) FROM people WHERE name ~ '^(a+)+$'", U),
    ("SELECT COUNT(*) FROM people WHERE regexp_matches(name, '(a+)+$')", U),
    ("SELECT COUNT(*) FROM people WHERE name LIKE name", U),
    ("SELECT COUNT(*) FROM people WHERE name LIKE 'x' ESCAPE '!'", U),
    ("SELECT COUNT(*) FROM people WHERE random() < 0.5", U),
    ("SELECT COUNT(*) FROM people WHERE hash(name) = 1", U),
    ("SELECT COUNT(*) FROM people WHERE md5(name) = 'x'", U),
    ("SELECT COUNT(*) FROM people WHERE name = $1", U),
    ("SELECT COUNT(*) FROM people WHERE name = :name", U),
]

NAMES_AND_SYNTAX = [
    ("SELECT COUNT(*) FROM vault.secrets", T),   # exists, but not granted to this analyst
    ("SELECT COUNT(*) FROM secrets", T),
    ("SELECT COUNT(*) FROM hr.nosuch", T),
    ("SELECT COUNT(*) FROM pe\u043eple", T),    # Cyrillic o
    ("SELECT COUNT(nosuch) FROM people", C),
    ("SELEC COUNT(*) FROM people", S),
    ("SELECT 'unterminated FROM people", S),
    ("SELECT COUNT(*)", U),
    ("", S),
]

ATTACKS = (RAW_ROWS + FILES_NETWORK_SETTINGS + WRITES_AND_SCRIPTS + JOINS_AND_SETS
           + UNBOUNDED_AND_KEYS + DATA_FUNCTIONS + NAMES_AND_SYNTAX)


@pytest.fixture(scope="module")
def domain(tmp_path_factory):
    home = tmp_path_factory.mktemp("attack-matrix")
    gw = build_gateway()
    # A second dataset the analyst holds no grant on: it must look like a missing one.
    gw.add_dataset(parse_dataset({
        "dataset": "vault", "budget": {"epsilon": 10, "delta": 1e-6},
        "tables": {"secrets": {"privacy_unit": "k", "columns": {
            "k": "int", "v": {"type": "int", "lower": 0, "upper": 10}}}}}),
        {"secrets": pd.DataFrame({"k": range(10), "v": range(10)})})
    users = UserStore(home / "users.sqlite")
    users.create_user("mallory", "analyst")
    users.grant("mallory", "hr", "query")
    service = GatewayService(gw, users, AuditLog.in_home(home))
    yield service, Caller(users.user("mallory"), "http", "127.0.0.1:5555")
    gw.close()


def _spent(service, caller):
    status = service.budget(caller, "hr")
    return status.spent_epsilon, status.spent_delta, status.queries


@pytest.mark.parametrize("sql,error", ATTACKS, ids=[f"{i:03d}" for i in range(len(ATTACKS))])
def test_attack_is_refused_cleanly(domain, sql, error):
    service, mallory = domain
    before, seq = _spent(service, mallory), service.audit.head()["seq"]
    with pytest.raises(error) as raised:
        service.query(mallory, sql)
    assert_error_is_clean(raised.value, sql)
    assert _spent(service, mallory) == before, "a refused query spent budget"
    [record] = service.audit.records(after_seq=seq)
    assert (record["decision"], record["code"]) == ("refused", raised.value.code)
    assert not leaked_needles(repr(record["details"]))
    # explain and describe refuse the same way, and spend nothing either.
    with pytest.raises(error):
        service.explain(mallory, sql)
    with pytest.raises(error):
        service.describe(mallory, sql)
    assert _spent(service, mallory) == before


def test_missing_and_forbidden_datasets_are_indistinguishable(domain):
    service, mallory = domain
    messages = []
    for name in ("vault", "nosuchdataset"):
        with pytest.raises(UndefinedTable) as raised:
            service.query(mallory, f"SELECT COUNT(*) FROM {name}.secrets")
        messages.append(raised.value.to_dict()["message"].replace(name, "X"))
    assert messages[0] == messages[1]


# Legitimate DP queries an attacker might hope to abuse: answered, noisy, nothing planted.
SAFE = [
    "SELECT SUM(salary) FROM people WHERE name = 'ZZSECRET42'",
    "SELECT AVG(cost), COUNT(*) FROM visits WHERE dept = 'ZZSECRET42'",
    "SELECT MAX(salary) FROM people",
    "SELECT MIN(cost), MAX(cost) FROM visits",
    "SELECT COUNT(*), SUM(salary) FROM people p JOIN regions r ON p.region = r.region",
    "SELECT COUNT(*) FROM people p JOIN people q ON p.pid = q.pid JOIN people r ON r.pid = q.pid",
    "SELECT CASE WHEN name = 'ZZSECRET42' THEN 'yes' ELSE 'no' END AS hit, COUNT(*) "
    "FROM people GROUP BY hit",
    "SELECT width_bucket(salary, 987654, 987655, 1) AS b, COUNT(*) FROM people GROUP BY b",
    "SELECT COUNT(*), SUM(salary) FROM people LIMIT 0",
    "SELECT COUNT(*) FROM people;;",
    "SELECT COUNT(*) FROM people /* ; DROP TABLE people */",
    "SELECT COUNT(*) FROM people WHERE name = ';COPY people TO ''/tmp/x'''",
    "SELECT COUNT(*) FROM people WHERE name = 'a\x00b'",
    "SELECT COUNT(income) FROM people",
]


@pytest.mark.parametrize("sql", SAFE, ids=[f"safe{i:02d}" for i in range(len(SAFE))])
def test_dp_queries_never_release_planted_values(domain, sql):
    service, mallory = domain
    before = _spent(service, mallory)
    result = service.query(mallory, sql, epsilon=0.5)
    assert_rows_are_clean(result.rows)
    assert all(column.noisy for column in result.columns
               if column.type in ("int", "float") and column.name not in ("hit", "b"))
    after = _spent(service, mallory)
    assert after[2] == before[2] + 1 and after[0] == pytest.approx(before[0] + 0.5)


def test_keys_from_the_data_pass_only_through_the_threshold(domain):
    service, mallory = domain
    for sql in ("SELECT name, COUNT(*) FROM people GROUP BY name",
                "SELECT x, COUNT(*) FROM (SELECT name AS x FROM people) t GROUP BY x",
                "WITH a AS (SELECT name AS n2 FROM people WHERE name = 'ZZSECRET42') "
                "SELECT n2, COUNT(*) FROM a GROUP BY n2",
                "SELECT dept, COUNT(*), SUM(cost) FROM visits GROUP BY dept",
                "SELECT born, COUNT(*) FROM people GROUP BY born"):
        result = service.query(mallory, sql, epsilon=2.0)
        assert result.key_release == "threshold"
        assert_rows_are_clean(result.rows)
        keys = {row[0] for row in result.rows}
        assert SECRET_NAME not in keys and HIDDEN_NAME not in keys
        assert not any(str(k).startswith("p") for k in keys), "a unique key passed the threshold"


@pytest.mark.parametrize("epsilon", [0, -1.0, float("nan"), float("inf"), "1", True, 1e309, [1]])
def test_bad_epsilon_is_refused_before_anything(domain, epsilon):
    service, mallory = domain
    before = _spent(service, mallory)
    with pytest.raises(InvalidParameter):
        service.query(mallory, "SELECT COUNT(*) FROM people", epsilon=epsilon)
    assert _spent(service, mallory) == before


def test_audit_records_never_hold_result_values(domain):
    service, mallory = domain
    seq = service.audit.head()["seq"]
    result = service.query(mallory, "SELECT region, SUM(salary) AS total, AVG(age) AS mean "
                                    "FROM people GROUP BY region", epsilon=0.5)
    values = [str(v) for row in result.rows for v in row[1:]]
    assert values and all(len(v) >= 4 for v in values)
    [record] = service.audit.records(after_seq=seq)
    assert record["decision"] == "ok" and record["rows_out"] == len(result.rows)
    text = repr(record)
    assert not [v for v in values if v in text], "a released value was written to the audit log"
    assert not leaked_needles(text)
