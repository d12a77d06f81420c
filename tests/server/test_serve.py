"""A real `sqlgate serve` process, the CLI, and the PG wire hook of `serve_async`."""
from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

import httpx
import pytest

from server import serve as serve_module
from server.state import ServerState
from sqlgate.cli import main as cli_main
from tests.server.conftest import HOSPITAL_YAML, patients_frame

# The installed `sqlgate` script when there is one (pip install -e .), else the same entry point.
CLI = [shutil.which("sqlgate")] if shutil.which("sqlgate") else \
    [sys.executable, "-c", "import sys; from sqlgate.cli import main; sys.exit(main())"]


def _start(home, *extra):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("SQLGATE_HTTP_PORT", None)
    process = subprocess.Popen([*CLI, "--home", str(home), "serve", "--host", "127.0.0.1",
                                "--port", "0", "--no-pg", "--no-plugins", "--log-level", "warning",
                                *extra],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=env)
    lines: list[str] = []
    found = threading.Event()
    port: list[int] = []

    def read():
        for line in process.stdout:
            lines.append(line)
            match = re.search(r"HTTP API on http://127\.0\.0\.1:(\d+)/v1", line)
            if match:
                port.append(int(match.group(1)))
                found.set()

    threading.Thread(target=read, daemon=True).start()
    if not found.wait(60):
        process.kill()
        pytest.fail("sqlgate serve did not start:\n" + "".join(lines))
    return process, port[0], lines


def _stop(process):
    process.send_signal(signal.SIGINT)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_sqlgate_serve_end_to_end(tmp_path):
    home = tmp_path / "home"
    process, port, lines = _start(home)
    try:
        token_file = home / "admin.token"
        admin_token = token_file.read_text().strip()
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert any(admin_token in line for line in lines)       # printed once, at first start
        base = f"http://127.0.0.1:{port}"
        admin = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {admin_token}"},
                             timeout=30)
        assert httpx.get(f"{base}/v1/health").json()["status"] == "ok"
        olga_token = admin.post("/v1/users", json={"name": "olga", "role": "owner"}).json()["token"]
        ann_token = admin.post("/v1/users", json={"name": "ann", "role": "analyst",
                                                   "password": "ann-password"}).json()["token"]
        olga = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {olga_token}"},
                            timeout=30)
        upload = olga.post("/v1/uploads", json={"metadata": HOSPITAL_YAML}).json()["upload_id"]
        data = patients_frame(300).to_csv(index=False).encode()
        observed = []

        def body():
            # Send half, then watch the session's progress from another connection.
            half = len(data) // 2
            yield data[:half]
            for _ in range(400):
                session = progress_of(upload)
                [table] = session["tables"]
                if table["receiving"] and table["bytes_received"] > 0:
                    observed.append(table["bytes_received"])
                    break
                time.sleep(0.025)
            yield data[half:]

        def progress_of(upload_id):
            return olga_progress.get(f"/v1/uploads/{upload_id}").json()

        olga_progress = httpx.Client(base_url=base, timeout=30,
                                     headers={"Authorization": f"Bearer {olga_token}"})
        put = olga.put(f"/v1/uploads/{upload}/tables/patients", content=body(),
                       headers={"Content-Type": "text/csv"})
        assert put.status_code == 200, put.text
        assert observed and 0 < observed[0] <= len(data) // 2
        assert progress_of(upload)["tables"][0]["bytes_received"] == len(data)
        assert olga.post(f"/v1/uploads/{upload}/commit").status_code == 200
        assert olga.put("/v1/users/ann/grants/hospital/query").status_code == 200
        # Basic auth for BI tools.
        ann = httpx.Client(base_url=base, auth=("ann", "ann-password"), timeout=30)
        answer = ann.post("/v1/query", json={"sql": "SELECT COUNT(*) AS n FROM patients",
                                             "format": "csv", "epsilon": 2})
        assert answer.status_code == 200, answer.text
        assert answer.text.splitlines()[0] == "n"
        assert float(answer.headers["x-sqlgate-cost-epsilon"]) == 2.0
        assert httpx.get(f"{base}/v1/budgets",
                         headers={"Authorization": f"Bearer {ann_token}"}).status_code == 200
        assert admin.get("/v1/audit/verify").json()["ok"] is True
        unknown = httpx.get(f"{base}/nothing")
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    finally:
        _stop(process)
    assert process.returncode == 0, "".join(lines)
    # A restart keeps users and data and does not create another admin.
    process, port, lines = _start(home)
    try:
        assert not any("admin token" in line for line in lines)
        listed = httpx.get(f"http://127.0.0.1:{port}/v1/datasets",
                           headers={"Authorization": f"Bearer {admin_token}"}).json()
        assert [d["name"] for d in listed["datasets"]] == ["hospital"]
    finally:
        _stop(process)


def test_user_and_grant_commands(tmp_path, capsys):
    home = str(tmp_path / "home")
    assert cli_main(["--home", home, "user", "add", "olga", "--role", "owner"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert token.startswith("sqg_")
    assert cli_main(["--home", home, "user", "token", "olga"]) == 0
    second = capsys.readouterr().out.strip()
    assert second.startswith("sqg_") and second != token
    assert cli_main(["--home", home, "grant", "olga", "hospital", "own"]) == 0
    assert "no such dataset yet" in capsys.readouterr().out
    assert cli_main(["--home", home, "user", "list"]) == 0
    listing = capsys.readouterr().out
    assert "olga" in listing and "own:hospital" in listing and "tokens=2" in listing
    assert cli_main(["--home", home, "user", "add", "olga", "--role", "owner"]) == 1
    assert cli_main(["--home", home, "grant", "nobody", "hospital", "query"]) == 1
    assert cli_main(["--home", home, "audit", "verify"]) == 0
    assert "OK: 3 records" in capsys.readouterr().out
    with ServerState.open(home) as state:
        assert state.users.authenticate_token(token).name == "olga"
        assert serve_module.ensure_admin(state) is None        # users exist: no bootstrap


def test_user_add_with_password_from_stdin(tmp_path, monkeypatch, capsys):
    import io
    home = str(tmp_path / "home")
    monkeypatch.setattr(sys, "stdin", io.StringIO("long-password\n"))
    assert cli_main(["--home", home, "user", "add", "ann", "--role", "analyst",
                     "--password"]) == 0
    with ServerState.open(home) as state:
        assert state.users.authenticate_password("ann", "long-password").name == "ann"


class FakePgWire:
    instances: list["FakePgWire"] = []

    def __init__(self, service, host, port, ssl_context=None):
        self.service, self.host, self.requested, self.ssl_context = service, host, port, ssl_context
        self.events: list[str] = []
        FakePgWire.instances.append(self)

    async def start(self):
        self._server = await asyncio.start_server(lambda r, w: w.close(), self.host,
                                                  self.requested)
        self.port = self._server.sockets[0].getsockname()[1]
        self.events.append("start")

    async def close(self):
        self._server.close()
        await self._server.wait_closed()
        self.events.append("close")


def test_serve_async_runs_pgwire_in_the_same_loop(tmp_path, monkeypatch):
    monkeypatch.setattr(serve_module, "_pg_server_class", lambda: FakePgWire)
    FakePgWire.instances.clear()
    seen = {}

    async def main(state):
        shutdown = asyncio.Event()

        def ready(info):
            seen.update(info)
            shutdown.set()

        await serve_module.serve_async(state, "127.0.0.1", 0, 0, ready=ready, shutdown=shutdown,
                                       log_level="warning")

    with ServerState.open(tmp_path / "home") as state:
        asyncio.run(main(state))
        [pg] = FakePgWire.instances
        assert pg.service is state.service and pg.host == "127.0.0.1"
        assert pg.events == ["start", "close"]
        assert seen["pg_port"] == pg.port and seen["http_port"] > 0


def test_serve_without_pgwire_serves_http_only(tmp_path, monkeypatch):
    monkeypatch.setattr(serve_module, "_pg_server_class", lambda: None)
    seen = {}

    async def main(state):
        shutdown = asyncio.Event()

        def ready(info):
            seen.update(info)
            # The server answers while running.
            with socket.create_connection(("127.0.0.1", info["http_port"]), timeout=5):
                pass
            shutdown.set()

        await serve_module.serve_async(state, "127.0.0.1", 0, 5433, ready=ready,
                                       shutdown=shutdown, log_level="warning")

    with ServerState.open(tmp_path / "home") as state:
        asyncio.run(main(state))
    assert seen["pg_port"] is None


def test_serve_options_come_from_the_environment(monkeypatch):
    from sqlgate.cli import _parser
    monkeypatch.setenv("SQLGATE_HOST", "127.0.0.2")
    monkeypatch.setenv("SQLGATE_HTTP_PORT", "9999")
    monkeypatch.setenv("SQLGATE_PG_PORT", "6543")
    args = _parser().parse_args(["serve"])
    assert (args.host, args.port, args.pg_port) == ("127.0.0.2", 9999, 6543)
    monkeypatch.delenv("SQLGATE_HTTP_PORT")
    monkeypatch.delenv("SQLGATE_PG_PORT")
    args = _parser().parse_args(["serve", "--port", "1234"])
    assert (args.port, args.pg_port) == (1234, serve_module.DEFAULT_PG_PORT)


def test_plugins_are_optional(tmp_path, monkeypatch, caplog):
    from starlette.routing import Route

    def missing(state):
        raise ImportError("not installed")

    def broken(state):
        raise RuntimeError("bug")

    def present(state):
        state.executors["training"] = lambda s, r: None
        return [Route("/plugin", lambda request: None)]

    monkeypatch.setattr(serve_module, "_console_routes", missing)
    monkeypatch.setattr(serve_module, "_trino_routes", broken)
    monkeypatch.setattr(serve_module, "_training_routes", present)
    with ServerState.open(tmp_path / "home") as state:
        routes = serve_module.plugin_routes(state)
        assert [r.path for r in routes] == ["/plugin"]
        assert "training" in state.executors
    assert "trino plugin could not be loaded" in caplog.text
