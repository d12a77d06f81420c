"""Router-to-domain transport: mutual TLS, and the federation routes mounted in a domain's
main HTTP app (one process holds the domain's engine and ledger)."""
from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import httpx
import pytest

from server.router.config import TlsConfig
from server.router.http import domain_app
from server.router.serve import federation_routes, uvicorn_tls
from tests._require import require_program
from tests.router.conftest import DOMAINS, clinic_metadata
from tests.router.servers import BackgroundServer

SQL = "SELECT COUNT(*) AS n FROM visits"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(directory: Path) -> dict[str, str]:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""
    require_program("openssl")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=sqlgate-test-ca", cwd=directory)
    (directory / "server.ext").write_text("subjectAltName=IP:127.0.0.1\n"
                                          "extendedKeyUsage=serverAuth\n")
    (directory / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN=sqlgate-{name}", cwd=directory)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
                 "-extfile", f"{name}.ext", cwd=directory)
    return {name: str(directory / name) for name in
            ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


def test_mutual_tls_between_router_and_domain(federation, tmp_path):
    pki = make_pki(tmp_path)
    server_tls = TlsConfig(cert=pki["server.pem"], key=pki["server.key"], ca=pki["ca.pem"])
    with BackgroundServer(domain_app(federation.services["c"]), **uvicorn_tls(server_tls)) as server:
        url = f"https://127.0.0.1:{server.port}"
        # Without a client certificate the TLS handshake is refused (before any token check).
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/federation/v1/health", timeout=10,
                      verify=ssl.create_default_context(cafile=pki["ca.pem"]))
        raw = dict(federation.files.router, tls={"ca": pki["ca.pem"], "cert": pki["client.pem"],
                                                 "key": pki["client.key"]})
        raw["domains"] = dict(raw["domains"], c=dict(raw["domains"]["c"], url=url))
        from server.router.config import parse_router_config
        from server.router.router import Router
        with Router(parse_router_config(raw)) as router:
            result = router.query(SQL, analyst="mtls", epsilon=1)
        assert result.rows[0][0] > 1000
        assert all(federation.gateways[d].budget("mtls", "clinic").queries == 1 for d in DOMAINS)


def test_federation_routes_mount_in_the_domain_http_app(federation, tmp_path):
    """`sqlgate serve --federation domain.yaml`: /federation/v1 next to the domain's /v1."""
    from server.http.app import create_app
    from server.state import ServerState
    paths = federation.files.write(tmp_path / "configs")
    with ServerState.open(tmp_path / "domain-c") as state:
        state.gateway.add_dataset(clinic_metadata(), {"visits": federation.frames["c"]})
        app = create_app(state, extra_routes=federation_routes(state.gateway, paths["c"]))
        with BackgroundServer(app) as server:
            assert httpx.get(f"{server.url}/v1/health", timeout=10).status_code == 200
            router = federation.router(c=server.url)
            result = router.query(SQL, analyst="mounted", epsilon=1)
            assert result.rows[0][0] > 1000
            assert state.gateway.budget("mounted", "clinic").queries == 1
            # The federation routes keep their own peer auth inside the shared app.
            refused = httpx.get(f"{server.url}/federation/v1/datasets", timeout=10)
            assert refused.status_code == 401
        # The domain's in-memory counterpart in the fixture was not used for c.
        assert federation.gateways["c"].budget("mounted", "clinic").queries == 0
