"""The attack list through every front end of a real `sqlgate serve` process: HTTP JSON,
PG wire (psycopg: message, DETAIL, HINT) and the Trino protocol (message, failureInfo).

Each attack is refused on every protocol with the error class the gateway chose (HTTP status,
SQLSTATE), no rendering of the error carries a planted value, nothing is charged, and the
PostgreSQL catalog emulation publishes no statistics of the private tables.
"""
from __future__ import annotations

import json
import time

import httpx
import pytest

from tests._require import require_module
from tests.security.live import LiveServer, prepare_home
from tests.security.sentinel import leaked_needles
from tests.security.test_attack_matrix import (FILES_NETWORK_SETTINGS, JOINS_AND_SETS, RAW_ROWS,
                                               UNBOUNDED_AND_KEYS, WRITES_AND_SCRIPTS)

ATTACKS = (RAW_ROWS[:12] + FILES_NETWORK_SETTINGS[:10] + WRITES_AND_SCRIPTS[:6]
           + JOINS_AND_SETS[:6] + UNBOUNDED_AND_KEYS[:8])
# The PG wire server answers some statements itself (as PostgreSQL would) rather than
# passing them to the gateway: they must still be refused, possibly with its own SQLSTATE.
# DuckDB's FROM-first syntax is a plain syntax error for a PostgreSQL server.
PG_OWN_ANSWERS = {"BEGIN", "ROLLBACK", "SET", "RESET", "SHOW", "DISCARD", "DEALLOCATE", "FROM"}


class Frontends:
    def __init__(self, server: LiveServer, analyst):
        self.server = server
        self.analyst = analyst
        self.http = httpx.Client(base_url=server.url, timeout=60,
                                 headers={"Authorization": f"Bearer {analyst.token}"})

    def spent(self) -> tuple:
        budget = self.http.get("/v1/budgets").json()["budgets"][0]
        return budget["spent_epsilon"], budget["queries"]

    def via_http(self, sql: str) -> tuple[int, dict, str]:
        response = self.http.post("/v1/query", json={"sql": sql, "epsilon": 0.1})
        body = response.json()
        return response.status_code, body.get("error", {}), response.text

    def via_pg(self, conn, sql: str):
        psycopg = require_module("psycopg")
        try:
            conn.execute(sql).fetchall()
            return None, ""
        except psycopg.Error as err:
            diag = err.diag
            text = " | ".join(str(x) for x in (err, diag.message_primary, diag.message_detail,
                                               diag.message_hint, diag.context) if x)
            return err.sqlstate, text

    def via_trino(self, sql: str) -> tuple[dict | None, str]:
        headers = {"Authorization": f"Bearer {self.analyst.token}",
                   "X-Trino-User": self.analyst.name, "X-Trino-Catalog": "sqlgate",
                   "X-Trino-Schema": "hr"}
        response = self.http.post("/v1/statement", content=sql.encode(), headers=headers)
        texts = [response.text]
        body = response.json()
        deadline = time.monotonic() + 60
        while "nextUri" in body and "error" not in body and time.monotonic() < deadline:
            response = self.http.get(body["nextUri"], headers=headers)
            texts.append(response.text)
            body = response.json()
        return body.get("error"), "\n".join(texts)


@pytest.fixture(scope="module")
def fronts(tmp_path_factory):
    home = tmp_path_factory.mktemp("frontends") / "home"
    analysts = prepare_home(home, {"mallory": 100.0})
    server = LiveServer.start(home)
    try:
        yield Frontends(server, analysts["mallory"])
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pg_conn(fronts):
    psycopg = require_module("psycopg")
    with psycopg.connect(fronts.server.dsn(fronts.analyst), autocommit=True) as conn:
        conn.execute("SET sqlgate.epsilon = 0.1")
        yield conn


def _clean(text: str, sql: str) -> None:
    leaked = [n for n in leaked_needles(text) if n not in sql]
    assert not leaked, f"planted value(s) {leaked} in: {text[:300]}"


@pytest.mark.parametrize("sql,error", ATTACKS, ids=[f"{i:02d}" for i in range(len(ATTACKS))])
def test_attack_on_every_protocol(fronts, pg_conn, sql, error):
    before = fronts.spent()
    status, body, text = fronts.via_http(sql)
    assert (status, body.get("code")) == (error.http_status, error.code), text
    _clean(text, sql)

    first_word = sql.lstrip("/* hidden").split()[0].upper() if sql.strip() else ""
    state, text = fronts.via_pg(pg_conn, sql)
    assert state is not None, f"answered over PG wire: {sql}"
    if first_word not in PG_OWN_ANSWERS:
        assert state == error.sqlstate, (state, text)
    _clean(text, sql)

    trino_error, text = fronts.via_trino(sql)
    assert trino_error is not None, f"answered over the Trino protocol: {sql}"
    _clean(text, sql)
    assert fronts.spent() == before


def test_catalog_emulation_publishes_no_statistics(fronts, pg_conn):
    for sql, check in [
        ("SELECT reltuples, relpages FROM pg_catalog.pg_class WHERE relname = 'people'",
         lambda rows: all(r[0] in (None, -1, 0) and r[1] in (None, 0) for r in rows)),
        ("SELECT COUNT(*) FROM pg_catalog.pg_stats", lambda rows: rows in ([], [(0,)])),
        ("SELECT * FROM pg_catalog.pg_stats", lambda rows: rows == []),
        ("SELECT n_live_tup FROM pg_stat_user_tables", lambda rows: rows == []),
    ]:
        text = ""
        try:
            rows = pg_conn.execute(sql).fetchall()
        except Exception as err:  # noqa: BLE001 - a refusal is as good as an empty answer
            rows, text = None, str(err)
        if rows is not None:
            assert check(rows), (sql, rows)
            _clean(repr(rows), sql)
        else:
            _clean(text, sql)


def test_dataset_description_and_mock_rows_come_from_metadata_only(fronts):
    for path in ("/v1/datasets", "/v1/datasets/hr", "/v1/datasets/hr/tables/people/mock?rows=200",
                 "/v1/datasets/hr/tables/visits/mock?rows=200"):
        response = fronts.http.get(path)
        assert response.status_code == 200
        _clean(response.text, "")
        body = json.loads(response.text)
        assert "row_count" not in json.dumps(body) and "rows_total" not in json.dumps(body)
