"""`sqlgate serve` configured only by the compose file's environment (as the container runs
it), with the privacy ledger in a real PostgreSQL: the console is served, an analyst's query
is charged in PostgreSQL and not in the home's SQLite file."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.console.deployfiles import load_compose
from tests.console.server import (ANALYST, ANALYST_PASSWORD, DATASET, clinic_frame,
                                  clinic_meta)

pytestmark = pytest.mark.clients


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def pg():
    from tests.pgserver import PostgresServer
    with PostgresServer() as server:
        yield server


def test_compose_environment_runs_a_server_on_a_postgres_ledger(pg, tmp_path):
    from accountant import PostgresLedger
    from server.state import ServerState

    dsn = pg.dsn()
    home = tmp_path / "home"
    # The owner prepares the domain (dataset, analyst) before the server starts.
    with ServerState.open(home, ledger_dsn=dsn) as state:
        state.gateway.add_dataset(clinic_meta(), {"patients": clinic_frame(300)})
        state.users.create_user(ANALYST, "analyst", password=ANALYST_PASSWORD)
        state.users.grant(ANALYST, DATASET, "query")

    gateway = load_compose()["services"]["gateway"]
    env = {k: str(v) for k, v in gateway["environment"].items()}
    http_port, pg_port = free_port(), free_port()
    # Only what a test must change: loopback, free ports, a temp home, the test PostgreSQL.
    env.update(SQLGATE_HOST="127.0.0.1", SQLGATE_HTTP_PORT=str(http_port),
               SQLGATE_PG_PORT=str(pg_port), SQLGATE_HOME=str(home), SQLGATE_LEDGER_DSN=dsn,
               SQLGATE_LOG_LEVEL="warning")
    proc_env = {k: v for k, v in os.environ.items() if not k.startswith("SQLGATE_")} | env
    command = [sys.executable, "-c", "import sys; from sqlgate.cli import main; sys.exit(main())",
               *gateway["command"]]
    log = (tmp_path / "serve.log").open("w")   # a file, so a chatty server never blocks
    proc = subprocess.Popen(command, env=proc_env, stdout=log, stderr=subprocess.STDOUT,
                            text=True)
    url = f"http://127.0.0.1:{http_port}"
    try:
        for _ in range(600):            # readiness poll (the engine opens, then uvicorn binds)
            if proc.poll() is not None:
                break
            try:
                if httpx.get(url + "/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]

        page = httpx.get(url + "/console/")
        assert page.status_code == 200 and "content-security-policy" in page.headers
        login = httpx.post(url + "/console/api/login",
                           json={"name": ANALYST, "password": ANALYST_PASSWORD})
        assert login.status_code == 200, login.text
        token = login.json()["token"]
        answer = httpx.post(url + "/v1/query", headers={"Authorization": f"Bearer {token}"},
                            json={"sql": "SELECT COUNT(*) AS n FROM patients", "epsilon": 0.5},
                            timeout=60)
        assert answer.status_code == 200, answer.text
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()

    ledger = PostgresLedger(dsn)
    try:
        charges = ledger.history(ANALYST, DATASET)
    finally:
        ledger.close()
    assert [c["epsilon"] for c in charges] == [pytest.approx(0.5)]
    assert not (home / "ledger.sqlite").exists()
