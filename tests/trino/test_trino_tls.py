"""What BI tools do in production: password auth over HTTPS (no insecure-auth override)."""
from __future__ import annotations

import pytest

from tests._require import require_module
from tests.client.live import self_signed_certificate, start_server

trino = require_module("trino")
sa = require_module("sqlalchemy")


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    cert, key = self_signed_certificate(tmp_path_factory.mktemp("tls"))
    server = start_server(tmp_path_factory.mktemp("tls-home"), tls=(cert, key))
    yield server, cert
    server.stop()


@pytest.fixture(autouse=True)
def _own_ca_only(monkeypatch):
    # requests lets REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE override a session's `verify`.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)


def test_trino_dbapi_and_sqlalchemy_over_https(tls_server):
    live, cert = tls_server
    from trino.auth import BasicAuthentication
    conn = trino.dbapi.connect(host=live.host, port=live.port, user="ann",
                               auth=BasicAuthentication("ann", live.password("ann")),
                               http_scheme="https", verify=cert, catalog="sqlgate",
                               schema="hospital")
    cur = conn.cursor()
    cur.execute("SELECT sex, COUNT(*) AS n FROM patients GROUP BY sex ORDER BY sex")
    assert [r[0] for r in cur.fetchall()] == ["f", "m"]
    conn.close()
    # The URL form Superset and other SQLAlchemy tools use, with https in connect_args.
    engine = sa.create_engine(f"trino://ann:{live.password('ann')}@{live.host}:{live.port}/"
                              f"sqlgate/hospital",
                              connect_args={"http_scheme": "https", "verify": cert})
    assert sa.inspect(engine).get_table_names("hospital") == ["patients"]
    engine.dispose()


def test_own_client_over_https(tls_server):
    live, cert = tls_server
    import sqlgate
    client = sqlgate.connect(live.url, user="ann", password=live.password("ann"), verify=cert)
    assert client.tables() == ["hospital.patients"]
    assert len(client.table("patients").age.mean().to_pandas()) == 1
    client.close()
