"""A real domain server (uvicorn on 127.0.0.1, a free port) for client and Trino tests.

Users: ann (analyst, may query `hospital`), bob (analyst, no grants), olga (owner of
`hospital`). Passwords are `<name>-password`. Data is small so the suites stay fast.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import uvicorn

from server.http.app import create_app
from server.state import ServerState
from server.trino import TrinoOptions, routes as trino_routes
from sqlgate.metadata import parse_dataset_text

REGIONS = ["north", "south", "east", "west"]
SECRET_NOTE = "TOPSECRET-4242"   # a private value that must never reach a client

HOSPITAL_YAML = """
dataset: hospital
description: patients of a small hospital
budget: {epsilon: 100.0, delta: 1.0e-6}
query: {epsilon: 0.5, delta: 1.0e-7, mechanism: laplace}
tables:
  patients:
    privacy_unit: pid
    max_groups_per_unit: 1
    max_rows_per_group: 1
    columns:
      pid: int
      age: {type: int, lower: 0, upper: 100, nullable: false}
      bmi: {type: float, lower: 15, upper: 50, nullable: false}
      region: {type: string, public_keys: [north, south, east, west]}
      sex: {type: string, public_keys: [f, m]}
      note: string
"""


def patients_frame(n: int = 2000, seed: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "pid": np.arange(n),
        "age": rng.integers(0, 90, n),
        "bmi": rng.uniform(16, 45, n).round(1),
        "region": rng.choice(REGIONS, n),
        "sex": rng.choice(["f", "m"], n),
        "note": np.where(np.arange(n) == 11, SECRET_NOTE, rng.choice(["a", "b"], n)),
    })


@dataclass
class LiveServer:
    state: ServerState
    url: str
    host: str
    port: int
    tokens: dict[str, str]
    _server: uvicorn.Server
    _thread: threading.Thread

    @staticmethod
    def password(user: str) -> str:
        return f"{user}-password"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=20)
        self.state.close()


def self_signed_certificate(directory) -> tuple[str, str]:
    """(certfile, keyfile) for 127.0.0.1, made by the openssl program."""
    import subprocess
    from pathlib import Path
    from tests._require import require_program
    openssl = require_program("openssl")
    cert, key = Path(directory) / "cert.pem", Path(directory) / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True,
                   capture_output=True, timeout=60)
    return str(cert), str(key)


def start_server(home, *, trino_options: TrinoOptions | None = None,
                 tls: tuple[str, str] | None = None) -> LiveServer:
    state = ServerState.open(home)
    users = state.users
    tokens = {}
    for name, role in {"ann": "analyst", "bob": "analyst", "olga": "owner"}.items():
        users.create_user(name, role, password=LiveServer.password(name))
        tokens[name] = users.issue_token(name)
    state.gateway.add_dataset(parse_dataset_text(HOSPITAL_YAML),
                              {"patients": patients_frame()})
    users.grant("olga", "hospital", "own")
    users.grant("ann", "hospital", "query")
    app = create_app(state, extra_routes=trino_routes(state, trino_options))
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                            lifespan="off", ssl_certfile=tls[0] if tls else None,
                            ssl_keyfile=tls[1] if tls else None,
                            timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            state.close()
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    scheme = "https" if tls else "http"
    return LiveServer(state, f"{scheme}://127.0.0.1:{port}", "127.0.0.1", port, tokens, server,
                      thread)
